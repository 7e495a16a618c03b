"""Model-state memory per device: parameters, gradients and optimizer states.

Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", §3.1 and §5 (Figure 1). Training a model of Ψ parameters with mixed precision and
Adam holds, per parameter,

* 2 bytes of fp16/bf16 parameters (the copy forward and backward use),
* 2 bytes of fp16/bf16 gradients,
* K = 12 bytes of optimizer state: an fp32 master copy of the parameters (4), Adam's first
  moment m (4) and second moment v (4).

With N_d data-parallel ranks, each ZeRO stage shards one more of these across the ranks:

=========  =========================  =============================  ==================
stage      name in the paper          bytes per device               7.5B, N_d=64, K=12
=========  =========================  =============================  ==================
0          DP baseline                (2 + 2 + K) Ψ                  120 GB
1          P_os                       2Ψ + 2Ψ + KΨ/N_d               31.4 GB
2          P_os+g                     2Ψ + (2 + K)Ψ/N_d              16.6 GB
3          P_os+g+p                   (2 + 2 + K)Ψ/N_d               1.9 GB
=========  =========================  =============================  ==================

(GB = 1e9 bytes, as in the paper.)  Other optimizers and precisions change the byte
counts, not the stage formulas; see :data:`OPTIMIZER_BYTES`.

**Offload** (Ren et al. 2021, "ZeRO-Offload", §4): the optimizer step runs on the host, so
the host holds, for this rank's shard of parameters, the fp32 parameters (the master copy,
or a host copy of fp32 weights), the optimizer moments and fp32 gradients. The device keeps
only what forward and backward need: the 16-bit parameters (sharded by stage 3) and the
gradient buffer that backward writes (full for stages 0/1, the shard for stages 2/3), and
no optimizer state. Stage 0 with offload means a whole unsharded copy per rank on the host.

**Model parallelism**: tensor parallel (tp) and pipeline parallel (pp) ranks each own
Ψ/(tp·pp) parameters; ZeRO then shards that over the dp ranks. This ignores the imbalance
of the embedding and LM head (which sit on the first/last pipeline stage) and the
LayerNorm weights and biases that tensor parallelism replicates — a few percent for large
models.
"""
from __future__ import annotations

PRECISIONS = ("fp32", "fp16", "bf16")
OPTIMIZERS = ("adam", "adamw", "lamb", "sgd", "sgd_plain")

# Bytes per parameter of optimizer state, split into (fp32 master weights, moments).
# K = master + moments, in the ZeRO paper's notation.
#   mixed precision (fp16/bf16): the optimizer updates an fp32 master copy (4 bytes)
#     adam / adamw / lamb: m and v in fp32 -> 4 + 8 = 12       (the paper's K = 12)
#     sgd with momentum:   one fp32 momentum buffer -> 4 + 4 = 8
#   fp32 training: the parameters already are fp32, no master copy
#     adam / adamw / lamb: m and v -> K = 8 ; sgd with momentum -> K = 4
#   "sgd_plain": SGD without momentum (PyTorch's default, momentum 0) keeps no state: K = 4 mixed, 0 fp32
OPTIMIZER_BYTES = {
    # optimizer: (moments bytes per parameter)
    "adam": 8, "adamw": 8, "lamb": 8, "sgd": 4, "sgd_plain": 0,
}


def optimizer_key(optimizer: dict) -> str:
    """The estimator's name for a config's ``optimizer`` section: its type, lower case, and
    ``"sgd_plain"`` for SGD whose momentum is 0 (the default, as in PyTorch: no momentum buffer)."""
    name = str(optimizer["type"]).lower()
    return "sgd_plain" if name == "sgd" and not (optimizer.get("params") or {}).get("momentum") else name


def _check(name: str, value, allowed) -> str:
    value = str(value).lower()
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    return value


def bytes_per_param(precision: str = "fp16", optimizer: str = "adam") -> dict:
    """Bytes per parameter of each model state, before any sharding.

    Returns ``{"parameters", "gradients", "master", "moments", "K"}`` where ``K`` is the
    ZeRO paper's optimizer-state bytes (master + moments).
    """
    precision = _check("precision", precision, PRECISIONS)
    optimizer = _check("optimizer", optimizer, OPTIMIZERS)
    mixed = precision in ("fp16", "bf16")
    weight = 2 if mixed else 4          # the copy that forward/backward use
    master = 4 if mixed else 0          # fp32 master weights, only needed in mixed precision
    moments = OPTIMIZER_BYTES[optimizer]
    return {"parameters": weight, "gradients": weight, "master": master,
            "moments": moments, "K": master + moments}


def model_state_memory(params: float, dp: int = 1, stage: int = 0, precision: str = "fp16",
                       optimizer: str = "adam", offload: bool = False, tp: int = 1,
                       pp: int = 1) -> dict:
    """Bytes of model states held by one device (and its host, with offload).

    ``params`` is Ψ, the whole model's parameter count; ``dp`` the data-parallel degree
    N_d over which ZeRO shards; ``stage`` 0–3. Returns a dict with ``parameters``,
    ``gradients``, ``optimizer_states``, ``total`` (device bytes) and ``host`` (host bytes
    per rank, 0 without offload), plus the inputs and the per-parameter byte counts.
    """
    if params <= 0:
        raise ValueError(f"params must be positive, got {params!r}")
    for name, value in (("dp", dp), ("tp", tp), ("pp", pp)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage!r}")
    b = bytes_per_param(precision, optimizer)
    psi = params / (tp * pp)            # parameters owned by this model-parallel rank
    n = dp
    # What each stage shards over the N_d data-parallel ranks (ZeRO §5.1-5.3):
    shard_opt = n if stage >= 1 else 1
    shard_grad = n if stage >= 2 else 1
    shard_param = n if stage >= 3 else 1

    parameters = b["parameters"] * psi / shard_param
    gradients = b["gradients"] * psi / shard_grad
    if offload:
        # ZeRO-Offload: the optimizer step runs on the host, on this rank's shard of
        # fp32 parameters with fp32 gradients copied down from the device.
        optimizer_states = 0.0
        host_per_param = 4 + b["moments"] + 4   # fp32 params (master) + moments + fp32 grads
        host = host_per_param * psi / shard_opt
    else:
        optimizer_states = b["K"] * psi / shard_opt
        host = 0.0
    return {
        "params": params, "params_per_model_parallel_rank": psi, "dp": dp, "tp": tp, "pp": pp,
        "stage": stage, "precision": str(precision).lower(), "optimizer": str(optimizer).lower(),
        "offload": offload,
        "bytes_per_param": b,
        "parameters": parameters, "gradients": gradients, "optimizer_states": optimizer_states,
        "total": parameters + gradients + optimizer_states,
        "host": host,
    }
