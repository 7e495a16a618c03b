"""The whole estimate for one minidist / DeepSpeed-style training config.

:func:`estimate` reads the keys of a ``python -m minidist.train`` config and
returns, as a JSON-able dict, every analytic figure for one step of that run: parameters,
model-state and activation memory per device, communication per rank, FLOPs, pipeline
bubble and an ideal step time on the config's device. Train reports put it beside the
measured numbers.

Keys read (anything else is ignored here; the trainer validates the config)::

    model {n_layer, n_embd, n_head, vocab_size, block_size, bias}
    train_micro_batch_size_per_gpu, gradient_accumulation_steps
    zero_optimization {stage, offload_optimizer {device}}
    fp16 {enabled}, bf16 {enabled}, optimizer {type}
    parallel {tensor, pipeline, schedule, virtual_stages, sequence_parallel, context {size, algorithm}}
    data {dataset, seq_len, n_digits}, activation_checkpointing, device

Missing keys fall back to the trainer's own defaults (:data:`minidist.defaults.DEFAULTS`),
so ``estimate({})`` describes the run ``python -m minidist.train`` makes with ``{}``; the
names of those that did are listed in ``defaults_used`` so that a report never hides an
assumption. As in the trainer, the sequence length and the vocabulary size, when left out,
come from the dataset, and the pipeline's micro-batches per step are
``gradient_accumulation_steps``.
``activation_checkpointing`` may be "none"/"selective"/"full", a bool (True = full), or a
dict with a ``granularity`` (minidist) or ``mode`` key; any other non-empty dict (DeepSpeed's
form) means full checkpointing of each block.
"""
from __future__ import annotations

from ..defaults import DEFAULTS, INTERLEAVED_1F1B, normalize_schedule
from ..device import get_spec
from ..training.config import sequence_length
from ..training.data import make_dataset
from .activations import activation_memory, checkpointed_layers
from .comm import comm_volume
from .context import context_activation_memory, context_bytes_per_step
from .flops import gpt2_param_count, training_flops
from .memory import model_state_memory, optimizer_key
from .moe import recomputed_weights
from .pipeline import peak_in_flight, pipeline_bubble

def _lookup(tree: dict, dotted: str):
    """``tree["a"]["b"]`` for "a.b", or None where a level is missing or None."""
    node = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or node.get(key) is None:     # absent or "decide later"
            return None
        node = node[key]
    return node


def _get(config: dict, dotted: str, used: list):
    """The config's value at ``dotted``, else the trainer's default (noted in ``used``)."""
    value = _lookup(config, dotted)
    if value is None:
        used.append(dotted)
        return _lookup(DEFAULTS, dotted)
    return value


def _data(config: dict, used: list) -> tuple[int, int]:
    """The sequence length and vocabulary size the trainer's dataset gives this config."""
    data = {k: v for k, v in {**DEFAULTS["data"], **(config.get("data") or {})}.items() if k in DEFAULTS["data"]}
    seq, key = sequence_length({"data": data})
    if key == "data.seq_len" and data["seq_len"] is None:
        used.append("data.seq_len")                  # the text corpus' default window
    vocab = _lookup(config, "model.vocab_size")
    if vocab is None:
        used.append("model.vocab_size")              # the trainer takes it from the dataset
        vocab = make_dataset({k: data[k] for k in ("dataset", "n_digits") if data[k] is not None}).vocab_size
    return seq, vocab


def _checkpointing(value) -> str:
    if value is None or value is False:
        return "none"
    if value is True:
        return "full"
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, dict):
        for key in ("granularity", "mode"):       # minidist's key, and a common alias
            if key in value:
                return str(value[key]).lower()
        if "enabled" in value:
            return "full" if value["enabled"] else "none"
        return "full" if value else "none"
    raise ValueError(f"activation_checkpointing must be a mode name, a bool or a dict, not {value!r}")


def estimate(config: dict, world_size: int = 1, mfu: float = 1.0) -> dict:
    """Analytic figures for one training step of ``config`` on ``world_size`` ranks.

    ``mfu`` scales the device's peak FLOP/s for the step-time estimate (1.0 = the ideal,
    which is also what minidist's simulated clock charges).
    """
    used: list = []
    L = int(_get(config, "model.n_layer", used))
    h = int(_get(config, "model.n_embd", used))
    a = int(_get(config, "model.n_head", used))
    seq, V = _data(config, used)
    T = int(_get(config, "model.block_size", used))
    bias = bool(_get(config, "model.bias", used))
    b = int(_get(config, "train_micro_batch_size_per_gpu", used))
    accum = int(_get(config, "gradient_accumulation_steps", used))
    zero = config.get("zero_optimization") or {}
    stage = int(_get(config, "zero_optimization.stage", used))
    offload = str((zero.get("offload_optimizer") or {}).get("device", "none")).lower() in ("cpu", "nvme")
    precision = ("bf16" if (config.get("bf16") or {}).get("enabled")
                 else "fp16" if (config.get("fp16") or {}).get("enabled") else "fp32")
    optimizer = optimizer_key({"type": _get(config, "optimizer.type", used),     # "sgd_plain": momentum 0
                               "params": (config.get("optimizer") or {}).get("params")})
    tp = int(_get(config, "parallel.tensor", used))
    pp = int(_get(config, "parallel.pipeline", used))
    sp = bool(_get(config, "parallel.sequence_parallel", used))
    schedule = normalize_schedule(_get(config, "parallel.schedule", used))
    v = int(_get(config, "parallel.virtual_stages", used))
    cp = int(_get(config, "parallel.context.size", used))
    cp_algorithm = str(_get(config, "parallel.context.algorithm", used))
    checkpointing = _checkpointing(config.get("activation_checkpointing"))
    ac = config.get("activation_checkpointing") if isinstance(config.get("activation_checkpointing"), dict) else {}
    method, num_layers = ac.get("method", "uniform"), int(ac.get("num_layers", 1))
    device = _get(config, "device", used)

    if world_size % (tp * pp * cp):
        raise ValueError(f"world size {world_size} is not divisible by tensor x pipeline x context = {tp * pp * cp}; "
                         f"change parallel.tensor/parallel.pipeline/parallel.context.size or the world size")
    dp = world_size // (tp * pp * cp)          # data-parallel slices of the batch; gradients span dp × cp
    micro_batches = accum        # per rank per optimizer step; the pipeline's m

    count = gpt2_param_count(L, h, V, T, bias)
    params = count["total"]
    states = model_state_memory(params, dp * cp, stage, precision, optimizer, offload, tp, pp)
    in_flight = peak_in_flight(schedule, pp, micro_batches, v) if pp > 1 else 1.0
    act = activation_memory(seq, b, h, a, L, tp, sp, checkpointing,
                            4 if precision == "fp32" else 2, pp, in_flight, vocab=V, method=method,
                            num_layers=num_layers)
    kept, whole = checkpointed_layers(L // pp, checkpointing, method, num_layers)
    if cp > 1:                                 # each rank keeps the activations of its s/cp tokens
        act = context_activation_memory(seq, b, h, a, L, cp, cp_algorithm, tp, sp, checkpointing,
                                        4 if precision == "fp32" else 2, vocab=V)
    comm = comm_volume(params, dp * cp, stage, precision, tp, pp, layers=L, hidden=h, seq=seq // cp,
                       micro_batch=b, micro_batches=micro_batches, sp=sp,
                       checkpointing=checkpointing, v=v if schedule == INTERLEAVED_1F1B else 1)
    tokens = b * seq * micro_batches * dp               # tokens per optimizer step, all ranks
    moe = (config.get("model") or {}).get("moe")
    recomputed, block_params = recomputed_weights(L, pp, h, checkpointing, method, num_layers, moe,
                                                  (moe or {}).get("group_size") or b * seq)
    flops = training_flops(params, tokens, L, h, seq, checkpointing, recomputed, block_params=block_params)
    spec = get_spec(device)
    compute_s = flops["flops"] / world_size / (spec.flops * mfu)
    times = (config.get("parallel") or {}).get("pass_times") or (1.0, 1.0, 1.0)   # zb_v's build times
    bubble = pipeline_bubble(schedule, pp, micro_batches, v, *times) if pp > 1 else None
    step_s = compute_s * (1 + bubble["bubble_relative"]) if bubble else compute_s
    return {
        "world_size": world_size, "dp": dp, "tp": tp, "pp": pp,
        "inputs": {"n_layer": L, "n_embd": h, "n_head": a, "vocab_size": V, "block_size": T,
                   "seq_len": seq, "micro_batch": b, "micro_batches": micro_batches,
                   "zero_stage": stage, "offload": offload, "precision": precision,
                   "optimizer": optimizer, "checkpointing": checkpointing,
                   "checkpointing_method": method, "checkpointing_layers": num_layers,
                   "schedule": schedule, "sequence_parallel": sp, "device": spec.name},
        "defaults_used": used,
        "params": count,
        "model_states": states,
        "activations": act,
        "memory_per_device": states["total"] + act["total"],
        "comm": comm,
        "flops": flops,
        "pipeline": bubble,
        "context": None if cp == 1 else context_bytes_per_step(
            cp_algorithm, cp, L, b, seq, h, micro_batches, 4 if precision == "fp32" else 2, tp, checkpointing,
            method=method, num_layers=num_layers),
        "time": {"compute_s_per_step": compute_s, "step_s_with_bubble": step_s,
                 "dp_comm_s_per_step": comm["dp_bytes"] / spec.beta, "mfu": mfu},
    }
