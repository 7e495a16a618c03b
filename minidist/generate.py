"""``python -m minidist.generate --load DIR --prompt "…" [--max-new-tokens N] [--temperature T] [--top-k K] [--seed S]``

Continues a prompt with the GPT of a ``python -m minidist.train --save DIR`` checkpoint of
any layout (DDP, ZeRO-1/2/3, tensor or pipeline parallel): the checkpoint is verified and
consolidated to the one-rank state dict (:func:`minidist.checkpoint.full_state_dict`, as
``zero_to_fp32``), its manifest gives the model config and the data, whose character
tokenizer reads the prompt. Generation runs on one simulated device with a KV cache
(:mod:`minidist.inference`; ``--no-cache`` re-runs the context per token). The text goes to
stdout, a line of measurements (cache bytes, FLOPs, simulated time) to stderr.

A missing or damaged checkpoint, an empty prompt, characters outside the vocabulary and a
prompt longer than the model's ``block_size`` are refused with a message (exit status 2).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .checkpoint import CheckpointError, full_state_dict, read_checkpoint
from .device import Device
from .inference import check_generate_args, kv_cache_bytes_per_token
from .memory import format_bytes
from .model import GPT, GPTConfig
from .training.config import data_config
from .training.data import make_dataset

WTE = "transformer.wte.weight"          # the token table: its rows are the vocabulary


class GenerateError(ValueError):
    """Something the user gave cannot be generated from; the message says what to give instead."""


def load_generator(path: str):
    """``(model, tokenizer, checkpoint)`` from a ``--save`` folder (or one step folder)."""
    ckpt = read_checkpoint(path)                      # CheckpointError: missing, truncated, corrupted
    state = full_state_dict(ckpt.universal)
    if WTE not in state:
        raise CheckpointError(ckpt.step_dir, f"holds no {WTE}: it is not a checkpoint of minidist's GPT; give a "
                                             f"folder written by python -m minidist.train --save")
    cfg = ckpt.manifest["config"]
    tokenizer = make_dataset(data_config(cfg)).tokenizer
    config = GPTConfig(**dict(cfg["model"], vocab_size=int(state[WTE].shape[0])))
    if config.vocab_size < tokenizer.vocab_size:
        raise CheckpointError(ckpt.step_dir, f"has a vocabulary of {config.vocab_size} tokens, fewer than its "
                                             f"data's {tokenizer.vocab_size} characters")
    model = GPT(config, seed=cfg["seed"], dtype=np.dtype(cfg["dtype"]))
    model.load_state_dict(state)
    return model, tokenizer, ckpt


def encode_prompt(prompt: str, tokenizer, block_size: int) -> np.ndarray:
    """The prompt's token ids (1, P), or a :class:`GenerateError` saying what is wrong with it."""
    if not prompt:
        raise GenerateError("--prompt is empty: give at least one character for the model to continue")
    unknown = list(dict.fromkeys(c for c in prompt if c not in tokenizer.stoi))      # in the prompt's order
    if unknown:
        raise GenerateError(f"--prompt has {len(unknown)} character(s) outside the model's vocabulary: "
                            f"{', '.join(repr(c) for c in unknown)} (the first at position "
                            f"{prompt.index(unknown[0])}); the "
                            f"{tokenizer.vocab_size} it knows are {''.join(tokenizer.chars)!r}")
    if len(prompt) > block_size:
        raise GenerateError(f"--prompt is {len(prompt)} characters, longer than the model's block_size "
                            f"{block_size} (the positions it has embeddings for); give at most {block_size}")
    return tokenizer.encode(prompt)[None, :]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minidist.generate", description=__doc__.splitlines()[0])
    ap.add_argument("--load", metavar="DIR", required=True, help="a --save folder of python -m minidist.train")
    ap.add_argument("--prompt", required=True, help="the text to continue (characters of the training data)")
    ap.add_argument("--max-new-tokens", type=int, default=200, metavar="N", help="tokens to generate (default 200)")
    ap.add_argument("--temperature", type=float, default=1.0, metavar="T",
                    help="0: greedy; 1: the model's distribution (default); lower is more conservative")
    ap.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K likeliest tokens only")
    ap.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the sampling (default 0)")
    ap.add_argument("--no-cache", action="store_true", help="re-run the whole context for every token")
    args = ap.parse_args(argv)
    try:
        check_generate_args(args.max_new_tokens, args.temperature, args.top_k, args.seed)
        model, tokenizer, ckpt = load_generator(args.load)
        idx = encode_prompt(args.prompt, tokenizer, model.config.block_size)
    except ValueError as e:       # GenerateError, CheckpointError, ConfigError and the argument checks
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = ckpt.manifest["config"]
    device = Device(cfg["device"])
    with device:
        out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k,
                             use_cache=not args.no_cache, seed=args.seed)
    print(tokenizer.decode(out[0]))
    c, phases = model.config, device.phases()
    w = np.dtype(cfg["dtype"]).itemsize
    cache = max((p["kv_cache_bytes"] for p in phases), default=0)
    prefills = sum(p["name"] == "prefill" for p in phases)
    slid = (f" (the context reached block_size {c.block_size}: each later token re-runs the last "
            f"{c.block_size} positions, a cached key belongs to its position)") if prefills > 1 else ""
    print(f"{args.max_new_tokens} tokens from {ckpt.step_dir} (after step {ckpt.step}): {prefills} prefill(s)"
          f"{slid}, {len(phases) - prefills} decode step(s), KV cache up to {format_bytes(cache)} "
          f"({kv_cache_bytes_per_token(c, w)} B per token = 2·n_layer·n_embd·{w}), "
          f"{device.flops / 1e6:.2f} MFLOP, simulated {device.clock.time * 1e6:.2f} µs on {device.spec.name}",
          file=sys.stderr)
    return 0


__all__ = ["GenerateError", "encode_prompt", "load_generator", "main"]

if __name__ == "__main__":
    sys.exit(main())
