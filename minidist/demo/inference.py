"""Chapter: generation with a KV cache (:mod:`minidist.inference`).

Everything is measured on a tiny GPT (untrained: what the cache costs and saves does not
depend on the weights), one prompt of the shipped corpus continued to the block size:

1. the tokens with and without the cache are the same, greedy and sampled;
2. the bytes the cache holds after each step beside ``2·n_layer·n_embd·w·L`` — fp32, bf16
   autocast, and per rank under tensor parallelism (figure 11_kv_cache_bytes);
3. the matmul FLOPs of each generated token with and without the cache beside their formulas
   (figure 11_flops_per_token);
4. prefill and decode steps on the simulated timeline (figure 11_generation_timeline);
5. tensor-parallel decoding on the tour's ranks: the cache split by heads, the same tokens as
   one rank, and the bytes each decode step sends, from the message log, beside the count of
   its collectives. TP ``t`` runs on the most ranks that form whole groups of ``t`` (3 ranks:
   TP 2 on the first 2, no TP 4; the chapter says so).
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from ..autocast import autocast
from ..device import Device
from ..distributed.log import MessageLog
from ..inference import (bytes_sent_in, forward_matmul_flops, kv_cache_bytes_per_token, non_embedding_parameters,
                         weight_matrix_parameters)
from ..model import GPT, GPTConfig
from ..parallel.tensor import TensorParallelLayers
from ..parallel.tensor.accounting import decode_step_bytes
from ..plotting.inference import plot_flops_per_token, plot_generation_timeline, plot_kv_cache_bytes
from ..training.data import CharTokenizer, load_corpus

TITLE = "Generation with a KV cache"

PROMPT = "Four score and seven years ago"      # 30 characters of the corpus
N_LAYER, N_HEAD, N_EMBD, BLOCK = 2, 4, 64, 64
NEW = BLOCK - len(PROMPT)                     # generate up to the block size: the cache never slides
SAMPLING = {"temperature": 1.0, "top_k": 10, "seed": 0}


def tokenizer() -> CharTokenizer:
    return CharTokenizer(load_corpus())


def config() -> GPTConfig:
    return GPTConfig(block_size=BLOCK, vocab_size=tokenizer().vocab_size, n_layer=N_LAYER, n_head=N_HEAD,
                     n_embd=N_EMBD)


def generate_on(device: Device, model: GPT, ids, n: int, fmt: str | None = None, **kwargs):
    """``model.generate`` on ``device`` (under autocast ``fmt``); returns the tokens and the
    device's ``prefill``/``decode`` spans."""
    with device, autocast(fmt):
        out = model.generate(ids, n, **kwargs)
    return out, device.phases()


def cache_rows(spans: list, cfg: GPTConfig, w: int, tp: int = 1) -> dict:
    """Context length, KV-cache bytes held after each step and 2·n_layer·n_embd·w·L / t."""
    per = kv_cache_bytes_per_token(cfg, w, tp)
    return {"context": [p["context"] for p in spans], "measured": [p["kv_cache_bytes"] for p in spans],
            "formula": [per * p["context"] for p in spans]}


def flops_rows(spans: list, cfg: GPTConfig) -> dict:
    """Context length, matmul FLOPs of each step after the first (one generated token each) and
    :func:`~minidist.inference.forward_matmul_flops` for the step's positions and context."""
    steps = spans[1:]
    return {"context": [p["context"] for p in steps], "measured": [p["matmul_flops"] for p in steps],
            "formula": [sum(forward_matmul_flops(cfg, p["tokens"], p["context"]).values()) for p in steps]}


def one_rank(cfg: GPTConfig, ids) -> dict:
    """Every single-rank measurement of the chapter."""
    model = GPT(cfg, seed=0)
    runs = {}
    for label, fmt, cache in (("fp32, KV cache", None, True), ("fp32, no cache", None, False),
                              ("bf16 autocast, KV cache", "bf16", True)):
        runs[label] = generate_on(Device(), model, ids, NEW, fmt, use_cache=cache, **SAMPLING)
    greedy = [generate_on(Device(), model, ids, NEW, temperature=0.0, use_cache=c)[0] for c in (True, False)]
    spans = {k: v[1] for k, v in runs.items()}
    return {
        "tokens": runs["fp32, KV cache"][0],
        "same_sampled": bool(np.array_equal(runs["fp32, KV cache"][0], runs["fp32, no cache"][0])),
        "same_greedy": bool(np.array_equal(*greedy)),
        "greedy": greedy[0],
        "spans": spans,
        "cache": {"fp32": cache_rows(spans["fp32, KV cache"], cfg, 4),
                  "bf16": cache_rows(spans["bf16 autocast, KV cache"], cfg, 2)},
        "flops": {"KV cache": flops_rows(spans["fp32, KV cache"], cfg),
                  "no cache": flops_rows(spans["fp32, no cache"], cfg)},
        "total_matmul_flops": {k: sum(p["matmul_flops"] for p in v) for k, v in spans.items()},
    }


def tp_ranks(world: int, t: int) -> int:
    """The ranks TP ``t`` decodes on: the most of ``world`` that form whole groups of ``t``
    (3 ranks, TP 2: the first 2; the third sits it out)."""
    return t * (world // t)


def tensor_parallel(comm, t: int, cfg: GPTConfig, ids) -> dict | None:
    """Generate on groups of ``t`` ranks (a fresh device and log each): tokens, the cache per
    rank after each step, and the bytes each decode step sent beside the formula. Uses the
    first :func:`tp_ranks` ranks; None on the others."""
    fresh = comm.dup()
    fresh.device, fresh.log = Device(comm.device.spec, rank=comm.rank), MessageLog()
    # why: a group per t consecutive ranks; a rank past the last whole group joins none
    group = fresh.split(comm.rank // t if comm.rank < tp_ranks(comm.size, t) else None, comm.rank)
    if group is None:
        return None
    layers = TensorParallelLayers(group)
    model = GPT(cfg, seed=0, layers=layers)
    out, spans = generate_on(group.device, model, ids, NEW, **SAMPLING)
    decode = [p for p in spans if p["name"] == "decode"]
    return {"t": t, "tokens": out, "cache": cache_rows(spans, cfg, 4, t),
            "bytes_per_decode_step": sorted({bytes_sent_in(group.log, p) for p in decode}),
            "bytes_formula": decode_step_bytes(cfg.n_layer, 1, cfg.n_embd, layers.padded_vocab_size, t, 4),
            "prefill_bytes": bytes_sent_in(group.log, spans[0])}


def run(comm, out_dir) -> dict:
    cfg, tok = config(), tokenizer()
    ids = tok.encode(PROMPT)[None, :]                                        # (1, P)
    tps = [t for t in (2, 4) if t <= comm.size and N_HEAD % t == 0]
    tp = [tensor_parallel(comm, t, cfg, ids) for t in tps]                  # rank 0 takes part in every one
    # why: rank 0 sets every rank's tokens beside one rank's (None: a rank that sat a TP run out)
    everyone = dist.gather_object(comm, [None if r is None else r["tokens"] for r in tp])
    if comm.rank != 0:
        return {"tp": tp}
    one = one_rank(cfg, ids)                                                 # the reference, on rank 0 only
    for i, r in enumerate(tp):
        r["ranks"] = tp_ranks(comm.size, r["t"])
        r["same_tokens"] = all(np.array_equal(ranks[i], one["tokens"]) for ranks in everyone if ranks[i] is not None)
    L = NEW + len(PROMPT) - 1                                                # the last token's context
    last = {k: v["measured"][-1] for k, v in one["flops"].items()}
    terms = forward_matmul_flops(cfg, 1, L)
    per = one["cache"]["fp32"]["measured"][-1] / one["cache"]["fp32"]["context"][-1]
    print(f"tiny GPT: {N_LAYER} layers, n_embd {N_EMBD}, {N_HEAD} heads, vocabulary {cfg.vocab_size}, untrained; "
          f"prompt {PROMPT!r} ({len(PROMPT)} tokens) + {NEW} new tokens = block_size {BLOCK}")
    print(f"same tokens with and without the cache: greedy {one['same_greedy']}, sampled "
          f"(temperature 1, top-k 10, seed 0) {one['same_sampled']}")
    print(f"sampled: {tok.decode(one['tokens'][0])!r}")
    print(f"KV cache per token: measured {per:.0f} B = 2·n_layer·n_embd·4 = {kv_cache_bytes_per_token(cfg, 4)} (fp32); "
          f"{one['cache']['bf16']['measured'][-1] / L:.0f} B under bf16 autocast"
          + "".join(f"; {r['cache']['measured'][-1] / L:.0f} B per rank under TP {r['t']}" for r in tp))
    print(f"matmul FLOPs of the last token (context {L}): with the cache {last['KV cache']:,} = 2·N_w "
          f"{terms['2·N_w per position']:,} + head {terms['tied head 2·n_embd·vocab']:,} + attention "
          f"{terms['attention 4·n_layer·positions·context·n_embd']:,}; without {last['no cache']:,} "
          f"({last['no cache'] / last['KV cache']:.1f}×); 2·N (non-embedding) = {2 * non_embedding_parameters(cfg):,}")
    tot = one["total_matmul_flops"]
    print(f"all {NEW} tokens: {tot['fp32, KV cache'] / 1e6:.1f} MFLOP with the cache, "
          f"{tot['fp32, no cache'] / 1e6:.1f} without ({tot['fp32, no cache'] / tot['fp32, KV cache']:.1f}×)")
    if tp:
        print(f"{'TP':>3} {'same tokens':>12} {'cache/rank B':>13} {'sent/decode step B':>19} {'formula B':>10} "
              f"{'prefill sent B':>15}")
        for r in tp:
            print(f"{r['t']:>3} {str(r['same_tokens']):>12} {r['cache']['measured'][-1]:>13} "
                  f"{'/'.join(map(str, r['bytes_per_decode_step'])):>19} {r['bytes_formula']:>10} {r['prefill_bytes']:>15}")
    for r in tp:
        if r["ranks"] < comm.size:
            print(f"TP {r['t']} decodes on the first {r['ranks']} of the tour's {comm.size} ranks; the others sit it out")
    for t in (2, 4):
        if t not in tps:
            print(f"TP {t} decoding is not run: it needs {t} ranks and the tour has {comm.size}")
    cache = {"fp32": one["cache"]["fp32"], "bf16 autocast": one["cache"]["bf16"]}
    cache.update({f"fp32, per rank of TP {r['t']}": r["cache"] for r in tp})
    paths = [
        plot_kv_cache_bytes(cache, out_dir / "11_kv_cache_bytes.png",
                            f"KV-cache bytes against the context: 2·n_layer·n_embd·w·L ({N_LAYER} layers, "
                            f"n_embd {N_EMBD})"),
        plot_flops_per_token(one["flops"], out_dir / "11_flops_per_token.png",
                             floor=2 * weight_matrix_parameters(cfg) + 2 * cfg.n_embd * cfg.vocab_size,
                             floor_label="2·N_w + 2·n_embd·vocab: every weight once, no attention",
                             cached="KV cache"),
        plot_generation_timeline({k: one["spans"][k] for k in ("fp32, KV cache", "fp32, no cache")},
                                 out_dir / "11_generation_timeline.png", cached="fp32, KV cache"),
    ]
    print("figures: " + ", ".join(p.name for p in paths))
    return {**one, "tp": tp, "figures": [str(p) for p in paths]}
