"""Quantization (issue 26): codes, scales and zero points equal an independent implementation of
the documented conventions, per scheme, granularity and bit width; NF4's code book equals the
published table; the stored bytes are what the formulas say.

The oracle below is written again from the conventions in minidist/compression/quantize.py's
docstring, element by element in plain Python (``round`` is half to even; float32 rounding
via ``struct``), with groups listed as index sets instead of array views."""
import math
import struct

import ml_dtypes
import numpy as np
import pytest

from minidist.compression import nf4
from minidist.compression.quantize import fake_quantize, int_range, pack_codes, quantize, unpack_codes

pytestmark = pytest.mark.compression


def f32(v: float) -> float:
    return struct.unpack("f", struct.pack("f", v))[0]


def groups_of(shape, granularity, group_size):
    """Index lists, one per scale, in the order of the documented scale shape."""
    n_in, n_out = shape
    if granularity == "tensor":
        return {(): [(i, j) for i in range(n_in) for j in range(n_out)]}
    if granularity == "channel":
        return {(j,): [(i, j) for i in range(n_in)] for j in range(n_out)}
    return {(g, j): [(i, j) for i in range(g * group_size, (g + 1) * group_size)]
            for g in range(n_in // group_size) for j in range(n_out)}


def oracle(x, bits, scheme, granularity, group_size=None):
    qmax = 2 ** (bits - 1) - 1
    qmin = -qmax - 1 if scheme == "asymmetric" else -qmax
    q, scales, zps = {}, {}, {}
    for key, idx in groups_of(x.shape, granularity, group_size).items():
        vals = [float(x[i, j]) for i, j in idx]
        if scheme == "symmetric":
            s = f32(max(abs(v) for v in vals) / qmax) or 1.0
            z = 0
            codes = [min(max(round(v / s), qmin), qmax) for v in vals]
        elif scheme == "asymmetric":
            lo, hi = min(min(vals), 0.0), max(max(vals), 0.0)
            s = f32((hi - lo) / (2 ** bits - 1)) or 1.0
            z = min(max(qmin - round(lo / s), qmin), qmax)
            codes = [min(max(round(v / s) + z, qmin), qmax) for v in vals]
        else:                                                     # log: levels scale·2^-j, j = 0…qmax-1
            s = f32(max(abs(v) for v in vals)) or 1.0
            z, jmax = 0, qmax - 1
            codes = []
            for v in vals:
                u = abs(v) / s
                if u < 2.0 ** -jmax / 2:
                    codes.append(0)
                else:
                    codes.append(int(math.copysign(min(round(-math.log2(u)), jmax) + 1, v)))
        scales[key], zps[key] = s, z
        for (i, j), c in zip(idx, codes):
            q[i, j] = c
    return q, scales, zps


def check_against_oracle(x, bits, scheme, granularity, group_size=None):
    got = quantize(x, bits, scheme, granularity, group_size)
    q, scales, zps = oracle(x, bits, scheme, granularity, group_size)
    assert got.q.dtype == np.int8 and got.scale.dtype == np.float32
    assert all(int(got.q[i, j]) == c for (i, j), c in q.items())
    assert all(float(got.scale[k]) == s for k, s in scales.items())
    if scheme == "asymmetric":
        assert all(int(got.zero_point[k]) == z for k, z in zps.items())
    else:
        assert got.zero_point is None
    qmin, qmax = int_range(bits, scheme)
    assert qmin <= got.q.min() and got.q.max() <= qmax
    return got


SCHEMES = ["symmetric", "asymmetric", "log"]
GRANULARITIES = [("tensor", None), ("channel", None), ("group", 4), ("group", 8)]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("granularity, group_size", GRANULARITIES)
@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_codes_scales_and_zero_points_equal_the_oracle(scheme, granularity, group_size, bits):
    rng = np.random.default_rng(bits * 100 + len(scheme))
    x = (rng.normal(0, 0.05, (16, 6)) + rng.normal(0, 0.02, (1, 6))).astype(np.float32)   # per-column offsets
    x[3, 2], x[7, 4] = 0.3, -0.25                                    # outliers in two columns
    check_against_oracle(x, bits, scheme, granularity, group_size)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
def test_the_usual_group_sizes_along_the_input_dimension(group_size, scheme):
    """GPTQ/AWQ-style groups of 32, 64 and 128 inputs of each output column, 4 and 8 bits."""
    x = np.random.default_rng(group_size).standard_t(4, size=(128, 3)).astype(np.float32) * 0.02
    for bits in (8, 4):
        got = check_against_oracle(x, bits, scheme, "group", group_size)
        assert got.scale.shape == (128 // group_size, 3)


@pytest.mark.parametrize("bits", [8, 4])
def test_exact_ties_round_half_to_even_and_clamp_after_rounding(bits):
    """max|x| = qmax/16: the scale is exactly 1/16, so (k + ½)/16 are exact ties."""
    qmax = 2 ** (bits - 1) - 1
    ties = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, qmax - 0.5], np.float32) / 16
    x = np.concatenate([ties, [qmax / 16]]).astype(np.float32).reshape(-1, 1)
    got = check_against_oracle(x, bits, "symmetric", "tensor")
    assert got.scale == np.float32(1 / 16)
    assert got.q.ravel()[:6].tolist() == [0, 2, 2, 0, -2, -2]       # half to even, not half up
    assert got.q.ravel()[6] == qmax - 1 + (qmax - 1) % 2            # (qmax − ½) → the even neighbour


def test_asymmetric_range_is_widened_to_include_zero_and_zero_is_exact():
    x = np.array([[0.2], [0.5], [0.9]], np.float32)                  # all positive: min is widened to 0
    got = check_against_oracle(x, 8, "asymmetric", "tensor")
    assert got.scale == np.float32(0.9 / 255)
    assert int(got.zero_point) == -128                              # −2^(b−1) − round(0 / s)
    assert fake_quantize(np.zeros((2, 1), np.float32), bits=8, scheme="asymmetric").tolist() == [[0.0], [0.0]]
    y = np.array([[-1.0], [0.5], [3.0]], np.float32)
    got = check_against_oracle(y, 4, "asymmetric", "tensor")
    assert int(got.zero_point) == -8 - round(-1.0 / float(got.scale))


def test_all_zero_groups_get_scale_one_and_code_zero():
    x = np.zeros((8, 3), np.float32)
    x[:, 1] = np.linspace(-1, 1, 8)
    for scheme in SCHEMES:
        got = check_against_oracle(x, 4, scheme, "channel")
        assert got.scale[0] == 1 and got.scale[2] == 1 and not got.dequantize()[:, [0, 2]].any()


def test_dequantize_is_scale_times_code_minus_zero_point():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    for scheme, gran, g in [("symmetric", "group", 4), ("asymmetric", "channel", None), ("log", "tensor", None)]:
        t = quantize(x, 4, scheme, gran, g)
        q, scales, zps = oracle(x, 4, scheme, gran, g)
        for key, idx in groups_of(x.shape, gran, g).items():
            for i, j in idx:
                level = q[i, j] - zps[key] if scheme != "log" else \
                    (0.0 if q[i, j] == 0 else math.copysign(2.0 ** -(abs(q[i, j]) - 1), q[i, j]))
                assert t.dequantize()[i, j] == np.float32(scales[key] * level)


def test_log_levels_are_powers_of_two_of_the_scale():
    x = np.array([1.0, 0.74, 0.7, 0.5, 0.3, 0.2, 0.01, 0.0, -0.26], np.float32).reshape(-1, 1)
    got = check_against_oracle(x, 3, "log", "tensor")                # 3 bits: levels 1, ½, ¼ and 0
    assert got.dequantize().ravel().tolist() == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.0, 0.0, -0.25]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_codes_pack_into_n_bits_each(bits):
    rng = np.random.default_rng(bits)
    qmin, qmax = int_range(bits, "asymmetric")
    q = rng.integers(qmin, qmax + 1, size=(7, 5)).astype(np.int8)
    packed = pack_codes(q, bits)
    assert packed.dtype == np.uint8 and packed.nbytes == math.ceil(q.size * bits / 8)
    assert (unpack_codes(packed, bits, q.shape) == q).all()
    # the layout: code i's bit k is bit (i·bits + k) of the little-endian byte stream
    stream = int.from_bytes(packed.tobytes(), "little")
    assert all(((stream >> (i * bits)) & ((1 << bits) - 1)) == (int(c) & ((1 << bits) - 1))
               for i, c in enumerate(q.ravel()))


@pytest.mark.parametrize("bits, granularity, group_size, scheme", [
    (8, "tensor", None, "symmetric"), (4, "channel", None, "symmetric"), (4, "group", 32, "asymmetric"),
    (3, "channel", None, "asymmetric"), (2, "group", 64, "symmetric")])
def test_bytes_per_parameter_is_bits_over_8_plus_scales(bits, granularity, group_size, scheme):
    n_in, n_out = 128, 48
    t = quantize(np.random.default_rng(0).normal(size=(n_in, n_out)), bits, scheme, granularity, group_size)
    scales = {"tensor": 1, "channel": n_out, "group": n_in // (group_size or 1) * n_out}[granularity]
    zero_point_bytes = math.ceil(scales * bits / 8) if scheme == "asymmetric" else 0
    assert t.nbytes() == math.ceil(n_in * n_out * bits / 8) + 4 * scales + zero_point_bytes


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="group_size 5 must divide in_features 8"):
        quantize(np.ones((8, 2)), 4, granularity="group", group_size=5)
    with pytest.raises(ValueError, match="needs a 2-D weight"):
        quantize(np.ones(8), 4, granularity="channel")
    with pytest.raises(ValueError, match="bits must be 2…8"):
        quantize(np.ones(8), 9)
    with pytest.raises(ValueError, match=r"bits must be 2…8 \(an integer\), got 4.5"):
        quantize(np.ones(8), 4.5)                 # would hold codes up to 9 under a 4-bit label
    for bad in (-8, 0, 2.0):
        with pytest.raises(ValueError, match=f"group_size {bad!r} must divide in_features 16 \\(a positive integer"):
            quantize(np.ones((16, 2)), 4, granularity="group", group_size=bad)
    for value in (np.nan, np.inf, -np.inf):
        x = np.ones((8, 2))
        x[3, 1] = value
        with pytest.raises(ValueError, match=f"1 non-finite value\\(s\\) \\(first at flat index 7: {value}\\)"):
            quantize(x, 8, granularity="channel")


# -- NF4 -------------------------------------------------------------------------------------------
# The NF4 code book as published: QLoRA (Dettmers et al. 2023), Appendix E, and bitsandbytes'
# functional.py (get_4bit_type("nf4")), typed in here from there.
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]


def test_nf4_code_book_equals_the_published_table():
    assert nf4.nf4_table().tolist() == np.array(PUBLISHED_NF4, np.float32).tolist()
    assert nf4.NF4.dtype == np.float32 and nf4.NF4[7] == 0.0


def nf4_oracle(w, block=64):
    """Codes and absmax per block, in torch's (out, in) order, nearest table entry (ties low)."""
    flat = [float(v) for v in np.asarray(w, np.float32).T.ravel()]
    codes, absmax = [], []
    for b0 in range(0, len(flat), block):
        blk = flat[b0:b0 + block]
        m = f32(max(abs(v) for v in blk)) or 1.0
        absmax.append(m)
        for v in blk:
            u = f32(v / m)                                          # the division is done in float32
            codes.append(min(range(16), key=lambda c: (abs(u - PUBLISHED_NF4[c]), c)))
    return codes, absmax


@pytest.mark.parametrize("shape", [(64, 8), (32, 96), (20, 7)])
def test_nf4_codes_and_block_scales_equal_the_oracle(shape):
    w = np.random.default_rng(shape[1]).normal(0, 0.02, shape).astype(np.float32)
    t = nf4.quantize_nf4(w, double_quant=False)
    codes, absmax = nf4_oracle(w)
    assert t.codes().tolist() == codes
    assert t.absmax.tolist() == absmax
    deq = t.dequantize()
    flat = [PUBLISHED_NF4[c] for c in codes]
    want = np.array([f32(f32(flat[i]) * absmax[i // 64]) for i in range(len(flat))], np.float32)
    assert (deq.T.ravel() == want).all()
    assert t.nbytes() == math.ceil(w.size / 2) + 4 * math.ceil(w.size / 64)


def test_double_quantization_of_the_block_constants():
    """c1 − mean (exact mean, float32), blocks of 256, scale absmax/448, FP8 E4M3 codes
    (ml_dtypes' float8_e4m3fn as the independent rounding); 4.127 bits per weight."""
    w = np.random.default_rng(1).standard_t(5, size=(1024, 96)).astype(np.float32)     # 1536 blocks
    t = nf4.quantize_nf4(w)
    c1 = nf4.quantize_nf4(w, double_quant=False).absmax
    mean = f32(math.fsum(float(c) for c in c1) / len(c1))
    assert t.dq.mean == np.float32(mean)
    d = (c1 - np.float32(mean)).astype(np.float32)
    for b in range(0, len(d), 256):
        blk = d[b:b + 256]
        c2 = np.float32(f32(float(np.abs(blk).max()) / 448))
        assert t.dq.c2[b // 256] == c2
        fp8 = (blk / c2).astype(ml_dtypes.float8_e4m3fn)
        assert (t.dq.codes[b:b + 256] == fp8.view(np.uint8)).all()
        back = (fp8.astype(np.float32) * c2 + np.float32(mean)).astype(np.float32)
        assert (t.block_scales()[b:b + 256] == back).all()
    n_blocks = w.size // 64
    assert t.nbytes() == w.size // 2 + n_blocks + 4 * math.ceil(n_blocks / 256) + 4
    assert t.nbytes() * 8 / w.size == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / w.size)
    assert nf4.quantize_nf4(w, double_quant=False).nbytes() * 8 / w.size == 4.5
    assert np.abs(t.dequantize() - w).max() < 0.2 * np.abs(w).max()


@pytest.mark.parametrize("change,words", [(lambda w: (w.__setitem__((3, 5), np.nan), w)[1], "non-finite"),
                                          (lambda w: (w.__setitem__((0, 0), np.inf), w)[1], "non-finite")])
def test_nf4_refuses_non_finite_weights_by_name(change, words):
    """One NaN made every dequantized weight NaN (through the double quantization's mean)."""
    w = change(np.random.default_rng(0).normal(size=(32, 24)).astype(np.float32))
    with pytest.raises(ValueError, match=words):
        nf4.quantize_nf4(w)


@pytest.mark.parametrize("block_size", [0, -64, 1.5])
def test_nf4_refuses_a_block_size_that_is_not_a_positive_integer(block_size):
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        nf4.quantize_nf4(np.ones((8, 8), np.float32), block_size=block_size)
