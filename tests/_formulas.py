"""The numbers the data-parallel tests expect, written from the papers — not read from the
strategies (their ``expected_model_states`` / ``expected_bytes_sent``) nor from
:mod:`minidist.estimate`, which they are checked against.

Notation of Rajbhandari et al. 2020 ("ZeRO", §3.1, §5, §7): Ψ parameters, N = p ranks,
w bytes per parameter and per gradient (4 in fp32, 2 in fp16/bf16), K bytes of optimizer
state per parameter (Adam: m and v, 8; in mixed precision + the 4-byte fp32 master: 12).

**Padding.** A flat bucket of n elements is cut into p chunks of ceil(n/p) elements, so a
rank's shard of optimizer state, gradients (stage ≥ 2) and parameters (stage 3) is
S = Σ_buckets ceil(n_b/p) elements — Ψ/N exactly when p divides every n_b.

**Memory per rank at the optimizer step** (ZeRO §5, Figure 1)::

    DDP (stage 0)   wΨ + wΨ + KΨ          (2 + 2 + K)Ψ in mixed precision
    ZeRO-1 (P_os)   wΨ + wΨ + K·S         2Ψ + 2Ψ + KΨ/N
    ZeRO-2 (+g)     wΨ + w·S + K·S        2Ψ + (2 + K)Ψ/N
    ZeRO-3 (+p)     w·S + w·S + K·S       (2 + 2 + K)Ψ/N

With ZeRO-Offload (Ren et al. 2021, §4) the device holds no optimizer state; the host holds
the fp32 master (4), the moments and an fp32 gradient copy (4) per element of the shard.

**Traffic per rank and step** (ZeRO §7; Patarasuk & Yuan 2009 for the ring). A ring
reduce-scatter or all-gather of a bucket of p·c elements sends (p−1) chunks of c; an
all-reduce is the two, 2(p−1)·c — 2(p−1)/p·Ψ·w without padding. ZeRO-1/2 replace the
all-reduce by a reduce-scatter of the gradients and an all-gather of the updated
parameters: the same 2(p−1)·S·w. ZeRO-3 holds no whole parameters: forward all-gathers
every unit, frees it, and backward must all-gather it *again*; the gradients are
reduce-scattered and the updated shards need no gather (the next forward gathers them):
3(p−1)·S·w, so 3/2 = 1.5× DDP's volume (ZeRO §7.2.2). A one-element all-reduce (the
global gradient norm for clipping, the fp16 overflow flag) is a ring all-reduce of one
float64 padded to p elements: 2(p−1)·8 bytes.
"""


def chunk(n: int, p: int) -> int:
    """c = ceil(n/p): the elements of one rank's chunk of a bucket of n."""
    return -(-n // p)


def shard(bucket_sizes, p: int) -> int:
    """S = Σ_b ceil(n_b/p): the elements a rank owns, padding included."""
    return sum(chunk(n, p) for n in bucket_sizes)


def gpt_units(model: dict, vocab_size: int) -> list:
    """Parameters of every ZeRO-3 unit of the nanoGPT model (bias=True), in forward order:
    the root (wte V·E, wpe T·E, ln_f 2E), then each block — ln_1 and ln_2 (2E each),
    c_attn E·3E + 3E, attn.c_proj E·E + E, mlp.c_fc E·4E + 4E, mlp.c_proj 4E·E + E:
    12E² + 13E."""
    e, t = model["n_embd"], model["block_size"]
    block = 12 * e * e + 13 * e
    return [vocab_size * e + t * e + 2 * e] + [block] * model["n_layer"]


def model_states(stage: int, psi: int, s: int, w: int, k: int, offload: bool = False,
                 moments: int = 8) -> dict:
    """Bytes one rank holds at the step (see the module docstring). ``s``: its shard S."""
    out = {"parameters": w * (s if stage >= 3 else psi),
           "gradients": w * (s if stage >= 2 else psi),
           "optimizer_states": k * (s if stage >= 1 else psi), "host": 0}
    if offload:
        out["optimizer_states"], out["host"] = 0, (4 + moments + 4) * s
    return out


def scalar_all_reduce(p: int) -> int:
    """Bytes one rank sends for a ring all-reduce of one float64 (padded to p elements)."""
    return 2 * (p - 1) * 8


def bytes_sent(stage: int, p: int, w: int, s: int, micro_batches: int = 1, scalars: int = 0) -> int:
    """Bytes one rank sends per step under DDP (stage 0, ``s`` = Σ_b ceil(n_b/p) over its
    buckets) or ZeRO: all-reduce 2(p−1)·S; ZeRO-1 reduce-scatter once (no_sync before) +
    all-gather; ZeRO-2 a reduce-scatter per micro-batch + one all-gather; ZeRO-3 two
    all-gathers and a reduce-scatter per micro-batch. ``scalars``: one-element all-reduces."""
    if p == 1:
        return 0
    collectives = {0: 2, 1: 2, 2: micro_batches + 1, 3: 3 * micro_batches}[stage]
    return collectives * (p - 1) * s * w + scalars * scalar_all_reduce(p)

