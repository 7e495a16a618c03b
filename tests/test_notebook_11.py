"""Execute notebooks/11_inference_and_compression.ipynb top to bottom and check what its inference
part prints: the same tokens with and without the cache, cache bytes and FLOPs per token equal to
their formulas, tensor-parallel decoding equal to one rank with the bytes of its collectives, and the
generate CLI on a ZeRO-3 checkpoint with its refusals; and its compression part: quantization's
conventions and NF4, every quantizer's held-out loss on a trained model, the exact int8 matmul, the
straight-through gradient, masks kept through fine-tuning, structured savings equal to the formula."""
import re

import pytest
from _notebook import count_images, run_notebook

pytestmark = [pytest.mark.inference, pytest.mark.compression, pytest.mark.notebook, pytest.mark.timeout(300)]


def test_notebook_11_runs_and_shows_the_cache_costs_and_savings(tmp_path):
    text, outputs = run_notebook("11_inference_and_compression.ipynb", workdir=tmp_path)
    assert text.count("same tokens with and without the cache: True") == 2          # greedy and sampled
    assert "after generate: 0 B under kv_cache" in text
    assert "fp32: 1024 B per token measured at every step, 2·2·64·4 = 1024 B by the formula" in text
    assert "bf16 autocast: 512 B per token measured at every step, 2·2·64·2 = 512 B by the formula" in text
    assert "GPT-3 shape: 4.72 MB per token, 9.66 GB for one sequence of 2048 tokens" in text
    assert "KV cache: every step's matmul FLOPs equal the formula: True; last token 238,464 FLOPs" in text
    assert "no cache: every step's matmul FLOPs equal the formula: True; last token 14,428,032 FLOPs" in text
    assert "= 16,640 = 2·n_layer·(n_ctx + 1)·n_embd = 16,640" in text
    assert "same tokens as without the cache: True" in text
    assert "phases: P " + "D " * 34 + "P P P P P" in text
    rows = re.findall(r"^ ([24]) +(\w+) +(\d+) +(\d+) +(\d+)$", text, re.M)
    assert rows == [("2", "True", "512", "1432", "1432"), ("4", "True", "256", "2148", "2148")]
    assert "done: 20 steps on 2 rank(s)" in text and "22 tokens from" in text
    assert "error: --prompt is empty" in text and "outside the model's vocabulary: 'ö'" in text
    assert "longer than the model's block_size 32" in text
    # the compression part (issue 26)
    assert "symmetric: q = [-42, 21, 127, 11], scale = 0.023622, zero_point = None" in text
    assert "asymmetric: q = [-128, -32, 127, -48], scale = 0.015686, zero_point = -64" in text
    assert "ties to even: [0, 2, 2, -2, 127]" in text
    assert "NF4 levels: [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0, 0.0796" in text
    assert "double quantization False: 4.500 bits per weight" in text and "True: 4.127 bits per weight" in text
    held = re.search(r"fp32 held-out loss (\S+) \(the trainer's own evaluation: (\S+)\)", text)
    assert held and held[1] == held[2]
    assert "int8 x int8 -> int32 equals the exact integer product: True" in text
    assert "'int8_matmul': 2097152" in text
    assert "gradient      : [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]" in text
    assert "the pruned weights are all still 0: True" in text
    assert "compacted logits equal the zeroed model's: True" in text
    assert "unstructured 50%: saves 0 bytes and 0 matmul FLOPs" in text
    saved = re.search(r"^structured 50%: saves (\d+) bytes and ([\d,]+) matmul FLOPs", text, re.M)
    assert saved and f"structured formula: {saved[1]} bytes, {saved[2]} matmul FLOPs" in text
    assert count_images(outputs) == 5
