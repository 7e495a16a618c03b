"""Command line of the analytic calculator: ``python -m minidist.estimate``.

Examples::

    python -m minidist.estimate --params 7.5B --dp 64 --zero all            # the ZeRO paper
    python -m minidist.estimate --params 7.5B --dp 64 --zero all --offload  # + host bytes
    python -m minidist.estimate --layers 96 --hidden 12288 --heads 96 --seq 2048 \\
        --vocab 50257 --tp 8 --pp 8 --dp 16 --zero 1 --checkpointing selective \\
        --tokens 300B --gpu A100-80GB-NVLink --mfu 0.4                       # GPT-3 175B
    python -m minidist.estimate --params 350M --dp 8 --zero 2 --json        # machine-readable
    python -m minidist.estimate --pp 4 --schedule zb_h1 --micro-batches 8   # the bubble alone
    python -m minidist.estimate --layers 4 --hidden 32 --heads 4 --seq 8 --vocab 65 \\
        --dp 2 --tp 2 --pp 2 --sp --zero 1 --micro-batches 4  # per pipeline rank, to the byte
    python -m minidist.estimate --layers 32 --hidden 4096 --heads 32 --seq 131072 --vocab 32000 \\
        --tp 8 --cp 8 --cp-algorithm ring --zero 1           # long context: bytes and memory per rank
    python -m minidist.estimate --layers 24 --hidden 2048 --heads 16 --seq 2048 --vocab 50257 \\
        --dp 16 --ep 8 --experts 64 --top-k 2 --capacity-factor 1.25 --zero 1   # experts per rank, all-to-all

With the whole shape (``--layers --hidden --heads --seq --vocab``) a table per pipeline rank
follows: model-state bytes and bytes sent per step of minidist's own layout, exact
(:mod:`minidist.estimate.grid3d`; with ``--experts`` each rank's MoE blocks, experts and
all-to-alls, :mod:`minidist.estimate.moe_grid`). Every number printed is also in ``--json``. Bytes use
decimal units (GB = 1e9 bytes), as the ZeRO paper does.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys

from ..defaults import DEFAULT_DEVICE, DEFAULT_SCHEDULE, INTERLEAVED_1F1B, SCHEDULES, normalize_schedule
from ..parallel.pipeline import V_SCHEDULES
from ..device import PRESETS
from .activations import CHECKPOINTING, METHODS, activation_memory
from .comm import comm_volume
from .context import ALGORITHMS as CP_ALGORITHMS, context_activation_memory, context_bytes_per_step, context_problem
from .flops import gpt2_param_count, training_flops, training_time
from .grid3d import estimate_3d
from .memory import OPTIMIZER_BYTES, OPTIMIZERS, bytes_per_param, model_state_memory
from .pipeline import check_pipeline, peak_in_flight, pipeline_bubble, runnable
from .moe import moe_estimate, recomputed_weights
from .render import fmt_bytes, render  # noqa: F401  (fmt_bytes: re-exported)

_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
_NUMBER = re.compile(r"^\s*(\d+\.?\d*|\.\d+)(e[+-]?\d+)?\s*([kmbgt]?)\s*$", re.IGNORECASE)


def parse_count(text: str) -> float:
    """'7.5B' -> 7.5e9, '350M' -> 3.5e8, '1.2T', '7.5e9', '125k'. Raises ArgumentTypeError."""
    match = _NUMBER.match(str(text))
    if not match:
        raise argparse.ArgumentTypeError(
            f"cannot read {text!r} as a count: write a number such as 7.5e9, or a number "
            f"with a suffix K, M, B or T (7.5B, 350M, 1.2T)")
    value = float(match.group(1) + (match.group(2) or "")) * _SUFFIX[match.group(3).lower()]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    if not math.isfinite(value) or value > 1e18:
        raise argparse.ArgumentTypeError(f"{text!r} is too large to be a count (at most 1e18); write e.g. 1.2T")
    if value != round(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of parameters; write e.g. 2 or 1.5B")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r} (e.g. 1, 8, 64)")
    return value


def _schedule(text: str) -> str:
    """A schedule name in any spelling ("ZB-H1", "ScheduleGPipe") -> its canonical name."""
    try:
        return normalize_schedule(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _zero(text: str):
    if str(text).lower() == "all":
        return "all"
    if text not in ("0", "1", "2", "3"):
        raise argparse.ArgumentTypeError(f"invalid ZeRO stage {text!r}: use 0, 1, 2, 3 or all")
    return int(text)


def _mfu(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text!r} (typical 0.3-0.55)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minidist.estimate",
        usage="%(prog)s (--params N | --layers L --hidden H --vocab V | --pp N) [options]",
        description="Analytic memory, communication, FLOP, bubble and time estimates for "
                    "distributed Transformer training (ZeRO, Megatron, Korthikanti et al.).")
    p.add_argument("--params", type=parse_count, help="parameters Ψ: 7.5e9, 7.5B, 350M, 1.2T "
                   "(default: derived from --layers/--hidden/--vocab with the GPT-2 count)")
    p.add_argument("--dp", type=_positive_int, default=1, help="data-parallel degree N_d (default 1)")
    p.add_argument("--tp", type=_positive_int, default=1, help="tensor-parallel degree (default 1)")
    p.add_argument("--pp", type=_positive_int, default=1, help="pipeline-parallel degree (default 1)")
    p.add_argument("--cp", type=_positive_int, default=1, help="context-parallel degree: the sequence split over "
                   "cp ranks (default 1)")
    p.add_argument("--cp-algorithm", choices=CP_ALGORITHMS, default="ring",
                   help="context parallelism's attention: ring (K/V around a ring) or ulysses (all-to-all)")
    p.add_argument("--zero", type=_zero, default="all", help="ZeRO stage 0-3 or 'all' (default all)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16",
                   help="training precision; fp16/bf16 = mixed precision with fp32 master weights")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="default adam (K=12 mixed); sgd keeps a momentum buffer, sgd_plain (momentum 0) none")
    p.add_argument("--offload", action="store_true", help="ZeRO-Offload: optimizer on the host")
    p.add_argument("--json", action="store_true", help="print the same numbers as JSON")
    shape = p.add_argument_group("model shape (refines activation and FLOP figures)")
    shape.add_argument("--layers", type=_positive_int, help="Transformer layers L")
    shape.add_argument("--hidden", type=_positive_int, help="hidden size h")
    shape.add_argument("--heads", type=_positive_int, help="attention heads a")
    shape.add_argument("--seq", type=_positive_int, help="sequence length s (also the context T)")
    shape.add_argument("--micro-batch", type=_positive_int, default=1, help="micro-batch size b (default 1)")
    shape.add_argument("--vocab", type=_positive_int, help="vocabulary size V")
    shape.add_argument("--sp", action="store_true", help="sequence parallelism with --tp")
    shape.add_argument("--make-vocab-size-divisible-by", type=_positive_int, default=1,
                       help="Megatron's vocabulary padding multiple under --tp (default 1; Megatron's 128)")
    shape.add_argument("--checkpointing", choices=CHECKPOINTING, default="none",
                       help="activation recomputation (default none)")
    shape.add_argument("--checkpointing-method", choices=METHODS, default="uniform",
                       help="with full: uniform (one input per --checkpointing-layers layers) or block "
                            "(the first --checkpointing-layers layers of each stage); Megatron's recompute_method")
    shape.add_argument("--checkpointing-layers", type=_positive_int, default=1,
                       help="Megatron's recompute_num_layers (default 1)")
    moe = p.add_argument_group("mixture of experts (with the model shape)")
    moe.add_argument("--experts", type=_positive_int, help="experts E per MoE layer (minidist.moe)")
    moe.add_argument("--top-k", type=_positive_int, default=2, help="experts per token k (default 2)")
    moe.add_argument("--capacity-factor", type=float, default=1.25, help="slots per expert: ⌈cf·T·k/E⌉ (default 1.25)")
    moe.add_argument("--every-n-layers", type=_positive_int, default=1, help="block i is MoE iff i %% n == 0 "
                     "(default 1)")
    moe.add_argument("--ep", type=_positive_int, default=1, help="expert-parallel degree, drawn from --dp (default 1)")
    pipe = p.add_argument_group("pipeline and time")
    pipe.add_argument("--schedule", type=_schedule, choices=SCHEDULES, default=DEFAULT_SCHEDULE,
                      help=f"pipeline schedule (default {DEFAULT_SCHEDULE}; torch class names accepted)")
    pipe.add_argument("--micro-batches", type=_positive_int,
                      help="micro-batches per step m (default 4*pp with --pp > 1, else 1)")
    pipe.add_argument("--virtual-stages", type=_positive_int, default=1, help="v for interleaved 1F1B")
    pipe.add_argument("--gpu", choices=sorted(PRESETS), default=DEFAULT_DEVICE, help="device preset")
    pipe.add_argument("--tokens", type=parse_count, help="training tokens D for total FLOPs and time (e.g. 300B)")
    pipe.add_argument("--mfu", type=_mfu, default=0.4, help="model FLOPs utilisation (default 0.4)")
    return p


def _check_shape(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Consistency errors that name the flag and the fix, as argparse errors."""
    if a.params is None and not (a.layers and a.hidden and a.vocab) and a.pp == 1:
        p.error("give --params (e.g. --params 7.5B) or the model shape --layers, --hidden and --vocab "
                "(or --pp N --schedule S --micro-batches M for the pipeline bubble alone)")
    if a.hidden and a.heads and a.hidden % a.heads:
        p.error(f"--hidden {a.hidden} is not divisible by --heads {a.heads}: choose heads that divide hidden")
    if a.heads and a.heads % a.tp:
        p.error(f"--heads {a.heads} is not divisible by --tp {a.tp}: "
                "choose a tensor-parallel degree that divides heads")
    if a.layers and a.layers % a.pp:
        p.error(f"--layers {a.layers} is not divisible by --pp {a.pp}: "
                "choose a pipeline degree that divides layers")
    if a.schedule == INTERLEAVED_1F1B and a.pp > 1 and a.micro_batches % a.pp:
        p.error(f"--schedule {INTERLEAVED_1F1B} needs --micro-batches divisible by --pp {a.pp} "
                f"(got {a.micro_batches})")
    # what the trainer refuses, the estimator refuses too, with the same reasons
    if a.sp and a.tp == 1:
        p.error("--sp needs --tp > 1 (sequence parallelism splits over the tensor-parallel ranks)")
    if a.sp and a.seq and a.seq % a.tp:
        p.error(f"--seq {a.seq} is not divisible by --tp {a.tp}: under --sp each rank holds seq/tp positions")
    chunks = a.pp * (a.virtual_stages if a.schedule == INTERLEAVED_1F1B else 2 if a.schedule in V_SCHEDULES else 1)
    if a.layers and a.pp > 1 and a.layers % chunks:
        p.error(f"--layers {a.layers} do not fill the {chunks} model chunks of --schedule {a.schedule} on --pp "
                f"{a.pp}; use a multiple of {chunks}")
    if a.cp > 1 and a.pp > 1:
        p.error("--cp with --pp > 1: context parallelism is not built into the pipeline engine; use --pp 1")
    problem = context_problem(a.cp_algorithm, a.cp, a.seq, a.heads, a.tp)
    if problem:
        p.error(f"--cp {a.cp} --cp-algorithm {a.cp_algorithm}: {problem}")
    if a.ep > 1 and not a.experts:
        p.error("--ep splits the experts of a mixture of experts: give --experts E")
    if a.experts and not (a.layers and a.hidden):
        p.error("--experts needs the model shape --layers and --hidden (and --seq for the all-to-all bytes)")
    if a.experts and not 0 < a.capacity_factor < float("inf"):
        p.error(f"--capacity-factor must be a finite number > 0, got {a.capacity_factor}")
    if a.experts and a.cp > 1:
        p.error("--experts with --cp > 1: a routing group is the tokens one rank holds, and context parallelism "
                "would split every sequence's group (the trainer refuses it too); use --cp 1")
    if a.optimizer == "lamb" and a.zero not in ("all", 0):
        p.error(f"--optimizer lamb with --zero {a.zero}: LAMB needs whole-tensor norms and cannot update a ZeRO "
                f"shard; use --zero 0, or adam, adamw or sgd")
    if a.offload and a.zero == 0:
        p.error("--offload with --zero 0: ZeRO-Offload moves the optimizer of a ZeRO stage 1-3 to the host; "
                "use --zero 1, 2 or 3 (or all)")
    if a.virtual_stages > 1 and a.schedule != INTERLEAVED_1F1B:
        p.error(f"--virtual-stages {a.virtual_stages} with --schedule {a.schedule}: only {INTERLEAVED_1F1B} "
                f"takes chunks per rank (the V schedules have 2 of their own); use --schedule {INTERLEAVED_1F1B}")
    if a.pp == 1 and a.schedule != DEFAULT_SCHEDULE:
        print(f"note: --schedule {a.schedule} has no effect with --pp 1 (no pipeline)", file=sys.stderr)
    if a.offload and a.layers and a.hidden and a.heads and a.seq and a.vocab:
        print("note: the per-pipeline-rank table is not shown with --offload (it does not model the optimizer on "
              "the host); the model-state rows above do", file=sys.stderr)
    unused = [(flag, why) for flag, why, given in (
        ("--top-k/--capacity-factor/--every-n-layers", "without --experts",
         not a.experts and (a.top_k, a.capacity_factor, a.every_n_layers) != (2, 1.25, 1)),
        ("--cp-algorithm", "with --cp 1", a.cp == 1 and a.cp_algorithm != "ring"),
        ("--make-vocab-size-divisible-by", "with --tp 1", a.tp == 1 and a.make_vocab_size_divisible_by != 1))
        if given]
    for flag, why in unused:
        print(f"note: {flag} has no effect {why}", file=sys.stderr)


def compute(a: argparse.Namespace) -> dict:
    """Every figure for parsed arguments, as a JSON-able dict (what --json prints)."""
    m = a.micro_batches
    # every schedule that can run m micro-batches, side by side; interleaved_1f1b with
    # --virtual-stages, or v=2 to show its effect; the chosen one first checked (a clear error)
    # (the chosen interleaved_1f1b keeps its own v, 1 included: the row marked chosen is the one run)
    v_shown = a.virtual_stages if a.virtual_stages > 1 or a.schedule == INTERLEAVED_1F1B else 2
    pipeline = None
    if a.pp > 1:
        check_pipeline(a.schedule, a.pp, m, a.virtual_stages)
        pipeline = [pipeline_bubble(s, a.pp, m, v_shown if s == INTERLEAVED_1F1B else 1) for s in runnable(a.pp, m)]
    if a.params is None and not (a.layers and a.hidden and a.vocab):        # --pp alone: the bubble only
        return {"inputs": {k: v for k, v in vars(a).items() if k != "json"}, "params": None, "pipeline": pipeline}
    derived = None
    if a.layers and a.hidden and a.vocab:
        derived = gpt2_param_count(a.layers, a.hidden, a.vocab, a.seq or 0)
    params = a.params if a.params is not None else derived["total"]
    stages = [0, 1, 2, 3] if a.zero == "all" else [a.zero]
    shape = bool(a.layers and a.hidden and a.seq)
    n_gpus = a.dp * a.tp * a.pp * a.cp
    zero_group = a.dp * a.cp                     # cp ranks replicate the parameters: ZeRO and DP span dp × cp
    local_seq = a.seq // a.cp if a.seq else a.seq   # what TP and PP messages carry: this cp rank's tokens
    out = {"inputs": {k: v for k, v in vars(a).items() if k != "json"},
           "params": params, "params_from_shape": derived,
           "bytes_per_param": bytes_per_param(a.precision, a.optimizer), "n_gpus": n_gpus}
    out["model_states"] = [model_state_memory(params, zero_group, s, a.precision, a.optimizer, a.offload,
                                              a.tp, a.pp) for s in stages]
    out["comm"] = [comm_volume(params, zero_group, s, a.precision, a.tp, a.pp, layers=a.layers,
                               hidden=a.hidden, seq=local_seq, micro_batch=a.micro_batch,
                               micro_batches=m, sp=a.sp, checkpointing=a.checkpointing,
                               v=a.virtual_stages if a.schedule == INTERLEAVED_1F1B else 1)
                   for s in stages]
    in_flight = peak_in_flight(a.schedule, a.pp, m, a.virtual_stages) if a.pp > 1 else 1.0
    out["activations"] = None
    if shape and a.heads:
        out["activations"] = {
            mode: activation_memory(a.seq, a.micro_batch, a.hidden, a.heads, a.layers, a.tp, a.sp,
                                    mode, 4 if a.precision == "fp32" else 2, a.pp, in_flight, a.vocab,
                                    a.checkpointing_method, a.checkpointing_layers)
            for mode in CHECKPOINTING}
    out["context"] = None
    if a.cp > 1 and shape and a.heads:
        w = 4 if a.precision == "fp32" else 2
        out["context"] = {
            "cp": a.cp, "algorithm": a.cp_algorithm,
            "bytes": context_bytes_per_step(a.cp_algorithm, a.cp, a.layers, a.micro_batch, a.seq, a.hidden, m, w,
                                            a.tp, a.checkpointing, method=a.checkpointing_method,
                                            num_layers=a.checkpointing_layers),
            "activations": {mode: context_activation_memory(a.seq, a.micro_batch, a.hidden, a.heads, a.layers,
                                                            a.cp, a.cp_algorithm, a.tp, a.sp, mode, w, a.vocab)
                            for mode in CHECKPOINTING}}
    step_tokens = a.micro_batch * (a.seq or 0) * m * a.dp
    kw = {"layers": a.layers, "hidden": a.hidden, "seq": a.seq, "checkpointing": a.checkpointing}
    if a.layers and a.hidden:
        experts = {"num_experts": a.experts, "top_k": a.top_k, "capacity_factor": a.capacity_factor,
                   "every_n_layers": a.every_n_layers} if a.experts else None
        fraction, block = recomputed_weights(a.layers, a.pp, a.hidden, a.checkpointing, a.checkpointing_method,
                                             a.checkpointing_layers, experts, a.micro_batch * (local_seq or 1))
        kw.update(recomputed_fraction=fraction, block_params=block)
    out["flops_per_step"] = training_flops(params, step_tokens, **kw) if a.seq else None
    out["flops_total"] = out["time"] = None
    if a.tokens:
        out["flops_total"] = training_flops(params, a.tokens, **kw)
        out["time"] = training_time(out["flops_total"]["flops"], n_gpus, a.gpu, a.mfu)
    out["pipeline"] = pipeline
    out["moe"] = None
    if a.experts:
        out["moe"] = [moe_estimate(a.layers, a.hidden, a.experts, a.top_k, a.capacity_factor, a.ep, a.every_n_layers,
                                   a.micro_batch * local_seq if a.seq else None, 1, m, a.dp, s, a.precision,
                                   a.optimizer, a.tp) for s in stages] or None
    out["per_pipeline_rank"] = None
    if a.layers and a.hidden and a.heads and a.seq and a.vocab and not a.offload:
        experts = {"num_experts": a.experts, "top_k": a.top_k, "capacity_factor": a.capacity_factor,
                   "every_n_layers": a.every_n_layers} if a.experts else None
        out["per_pipeline_rank"] = [estimate_3d(
            a.layers, a.hidden, a.heads, a.vocab, a.seq, local_seq, a.micro_batch, m, zero_group, a.tp, a.pp,
            a.sp and a.tp > 1, s, a.precision, a.schedule,
            a.virtual_stages if a.schedule == INTERLEAVED_1F1B else 1,
            make_vocab_size_divisible_by=a.make_vocab_size_divisible_by,
            moments=OPTIMIZER_BYTES[a.optimizer] // 4, moe=experts, ep=a.ep)
            for s in stages] or None
        for est, grid in zip(out["moe"] or [], out["per_pipeline_rank"] or []):   # each stage: its own MoE blocks
            est["per_pipeline_rank"] = [rank["experts"] for rank in grid["ranks"]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.micro_batches is None:
        args.micro_batches = 4 * args.pp if args.pp > 1 else 1
    _check_shape(parser, args)
    try:
        result = compute(args)
    except ValueError as err:              # anything the formulas reject, as a usage error
        parser.error(str(err))
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0
