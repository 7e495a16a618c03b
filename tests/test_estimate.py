"""Tests of the analytic calculators (minidist.estimate) against the papers' own numbers.

Expected values are derived here by hand from the papers' formulas or worked examples
(ZeRO §5 / Figure 1, Korthikanti et al. Table 2 and §5, the notes' GPT-3 FLOP examples),
or by a small independent simulation (pipeline schedules), never read off the code.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minidist import model as model_mod
from minidist.estimate import (
    activation_memory,
    comm_volume,
    estimate,
    gpt2_param_count,
    layer_activation_bytes,
    model_state_memory,
    peak_in_flight,
    pipeline_bubble,
    training_flops,
    training_time,
)
from minidist.estimate.cli import main, parse_count
from minidist.training import config as cfg_mod

pytestmark = pytest.mark.estimate

PSI, ND = 7.5e9, 64          # the ZeRO paper's running example


# ---------------------------------------------------------------- model states (ZeRO)
def test_zero_paper_example_rounds_to_the_papers_figures():
    totals = [model_state_memory(PSI, dp=ND, stage=s)["total"] for s in range(4)]
    assert [round(t / 1e9, 1) for t in totals] == [120.0, 31.4, 16.6, 1.9]
    K = 12
    exact = [(2 + 2 + K) * PSI, 2 * PSI + 2 * PSI + K * PSI / ND,
             2 * PSI + (2 + K) * PSI / ND, (2 + 2 + K) * PSI / ND]
    assert totals == pytest.approx(exact, rel=1e-12)


def test_each_stage_shards_one_more_state():
    s = [model_state_memory(PSI, dp=ND, stage=k) for k in range(4)]
    assert s[0]["optimizer_states"] == pytest.approx(12 * PSI)
    assert s[1]["optimizer_states"] == pytest.approx(12 * PSI / ND)
    assert s[1]["gradients"] == s[0]["gradients"] == pytest.approx(2 * PSI)
    assert s[2]["gradients"] == pytest.approx(2 * PSI / ND)
    assert s[2]["parameters"] == pytest.approx(2 * PSI)
    assert s[3]["parameters"] == pytest.approx(2 * PSI / ND)
    assert all(x["host"] == 0 for x in s)


@pytest.mark.parametrize("precision,optimizer,per_param", [
    ("fp16", "adam", 2 + 2 + 12),     # fp16 weights+grads, fp32 master + m + v
    ("bf16", "adamw", 2 + 2 + 12),
    ("fp32", "adam", 4 + 4 + 8),      # no master copy: K = m + v
    ("fp16", "sgd", 2 + 2 + 8),       # fp32 master + momentum
    ("fp32", "sgd", 4 + 4 + 4),       # momentum only
    ("bf16", "sgd_plain", 2 + 2 + 4),  # momentum 0: the fp32 master alone
    ("fp32", "sgd_plain", 4 + 4 + 0),  # no state at all
])
def test_bytes_per_parameter_by_optimizer_and_precision(precision, optimizer, per_param):
    assert model_state_memory(1000, precision=precision, optimizer=optimizer)["total"] == per_param * 1000


def test_offload_moves_optimizer_to_host_with_fp32_gradients():
    for stage in range(4):
        on = model_state_memory(PSI, ND, stage, offload=True)
        off = model_state_memory(PSI, ND, stage)
        assert on["optimizer_states"] == 0
        assert on["parameters"] == off["parameters"] and on["gradients"] == off["gradients"]
        shard = ND if stage >= 1 else 1
        # host: fp32 master + m + v (K=12) plus an fp32 gradient copy (4) per sharded parameter
        assert on["host"] == pytest.approx((12 + 4) * PSI / shard)
    # ZeRO-2 + offload (the ZeRO-Offload setting): only fp16 params + the gradient shard stay
    assert model_state_memory(PSI, ND, 2, offload=True)["total"] == pytest.approx(2 * PSI + 2 * PSI / ND)


def test_tensor_and_pipeline_parallel_divide_psi():
    a = model_state_memory(PSI, dp=4, stage=1, tp=8, pp=4)
    b = model_state_memory(PSI / 32, dp=4, stage=1)
    assert a["total"] == pytest.approx(b["total"])


def test_model_state_memory_rejects_bad_input():
    with pytest.raises(ValueError, match="stage"):
        model_state_memory(PSI, stage=4)
    with pytest.raises(ValueError, match="dp"):
        model_state_memory(PSI, dp=0)
    with pytest.raises(ValueError, match="optimizer"):
        model_state_memory(PSI, optimizer="adagrad")


# ---------------------------------------------------------------- activations (Korthikanti)
def table2(s, b, h, a, t, case):
    """Korthikanti et al. 2022, Table 2, bytes per layer, written out independently."""
    sbh = s * b * h
    return {
        "none": sbh * (34 + 5 * a * s / h),
        "tp": sbh * (10 + 24 / t + 5 * a * s / (h * t)),
        "tp+sp": sbh / t * (34 + 5 * a * s / h),
        "tp+selective": sbh * (10 + 24 / t),
        "tp+sp+selective": sbh * 34 / t,
        "full": sbh * 2,
    }[case]


CASES = {"tp": (False, "none"), "tp+sp": (True, "none"), "tp+selective": (False, "selective"),
         "tp+sp+selective": (True, "selective"), "full": (False, "full")}


@pytest.mark.parametrize("s,b,h,a,t", [(2048, 1, 12288, 96, 8),     # GPT-3 175B in the paper
                                       (128, 4, 256, 8, 2)])
def test_activation_bytes_match_table_2(s, b, h, a, t):
    assert layer_activation_bytes(s, b, h, a) == pytest.approx(table2(s, b, h, a, 1, "none"))
    for case, (sp, ckpt) in CASES.items():
        got = layer_activation_bytes(s, b, h, a, tp=t, sp=sp, checkpointing=ckpt)
        assert got == pytest.approx(table2(s, b, h, a, t, case)), case


@pytest.mark.parametrize("s,h,a,saving", [(2048, 12288, 96, 0.70),    # GPT-3: 5as/h = 80
                                          (2048, 20480, 128, 0.65)])  # MT-NLG 530B: 5as/h = 64
def test_selective_recompute_saves_what_the_paper_says(s, h, a, saving):
    none = layer_activation_bytes(s, 1, h, a, tp=8, sp=True)
    sel = layer_activation_bytes(s, 1, h, a, tp=8, sp=True, checkpointing="selective")
    assert round(1 - sel / none, 2) == saving


def test_fp32_activations_double_every_tensor_but_the_masks():
    s, b, h, a = 64, 2, 32, 4
    # the 34·sbh are 16·sbh 2-byte elements + 2·sbh mask bytes; the 5·as²b are 2·as²b 2-byte
    # elements (softmax output, dropout output) + as²b mask bytes. At 4 bytes: 66 and 9.
    assert layer_activation_bytes(s, b, h, a, precision_bytes=4) == pytest.approx(
        s * b * h * (66 + 9 * a * s / h))


def test_1f1b_first_stage_holds_all_layers_worth():
    # Korthikanti §4.2.3: with 1F1B the first stage keeps p micro-batches of L/p layers = L layers
    s, b, h, a, L, p = 2048, 1, 12288, 96, 96, 8
    act = activation_memory(s, b, h, a, L, tp=8, sp=True, pp=p, in_flight=peak_in_flight("1f1b", p, 32))
    assert act["total"] == pytest.approx(L * table2(s, b, h, a, 8, "tp+sp"))
    inter = activation_memory(s, b, h, a, L, tp=8, sp=True, pp=p,
                              in_flight=peak_in_flight("interleaved_1f1b", p, 32, v=4))
    assert inter["total"] == pytest.approx(act["total"] * (1 + (p - 1) / (p * 4)))


# ---------------------------------------------------------------- communication
def test_dp_comm_volumes_follow_the_ring_formulas():
    n = ND
    ddp = comm_volume(PSI, dp=n, stage=0)["dp_elements"]
    assert ddp == pytest.approx(2 * (n - 1) / n * PSI)
    assert comm_volume(PSI, dp=n, stage=1)["dp_elements"] == pytest.approx(ddp)
    assert comm_volume(PSI, dp=n, stage=2)["dp_elements"] == pytest.approx(ddp)
    assert comm_volume(PSI, dp=n, stage=3)["dp_elements"] == pytest.approx(1.5 * ddp)
    assert comm_volume(PSI, dp=n, stage=0)["dp_bytes"] == pytest.approx(2 * ddp)        # fp16
    assert comm_volume(PSI, dp=n, precision="fp32")["dp_bytes"] == pytest.approx(4 * ddp)
    ps = comm_volume(PSI, dp=n, strategy="parameter_server", precision="fp32")
    assert ps["dp_elements"] == PSI and ps["ps_root_bytes"] == pytest.approx(4 * (n - 1) * PSI)
    assert comm_volume(PSI, dp=1)["dp_bytes"] == 0


def test_gradient_accumulation_multiplies_zero2_and_zero3_traffic():
    n, k, r = 8, 4, 7 / 8
    vol = {s: comm_volume(1e6, dp=n, stage=s, micro_batches=k)["dp_elements"] for s in range(4)}
    assert vol[0] == vol[1] == pytest.approx(2 * r * 1e6)           # once per step (no_sync)
    assert vol[2] == pytest.approx((k + 1) * r * 1e6)                # RS per micro-batch + 1 AG
    assert vol[3] == pytest.approx(3 * k * r * 1e6)                  # AG, AG, RS per micro-batch


def test_tensor_and_pipeline_parallel_traffic():
    L, h, s, b, t, m = 4, 64, 32, 2, 4, 3
    c = comm_volume(1e6, tp=t, layers=L, hidden=h, seq=s, micro_batch=b, micro_batches=m)
    # Megatron: 2 all-reduces forward + 2 backward of (b, s, h) per layer, ring 2(t-1)/t each
    assert c["tp_elements"] == pytest.approx(4 * 2 * (t - 1) / t * b * s * h * L * m)
    full = comm_volume(1e6, tp=t, layers=L, hidden=h, seq=s, micro_batch=b, micro_batches=m,
                       checkpointing="full")
    assert full["tp_elements"] == pytest.approx(c["tp_elements"] * 6 / 4)   # recomputed forward
    assert comm_volume(1e6, tp=1, layers=L, hidden=h, seq=s)["tp_elements"] == 0
    p = comm_volume(1e6, pp=2, layers=L, hidden=h, seq=s, micro_batch=b, micro_batches=m)
    assert p["pp_elements"] == pytest.approx(2 * b * s * h * m)   # activation out + gradient back


# ---------------------------------------------------------------- FLOPs and time
def test_gpt3_training_flops_from_the_notes():
    assert training_flops(175e9, 300e9)["flops_6nd"] == pytest.approx(3.15e23, rel=1e-12)


def test_training_time_examples_from_the_notes():
    # GPT-3 82B on 150B tokens, 1024 A100 at 312 TFLOP/s peak: 2.67 days
    f = training_flops(8.2e10, 1.5e11)
    assert round(training_time(f["flops_6nd"], 1024, "A100-80GB-NVLink", mfu=1.0)["days"], 2) == 2.67
    # ... and with 8ND (checkpointing) at the measured 68 TFLOP/s: 16.355 days
    t = training_time(f["flops_8nd"], 1024, "A100-80GB-NVLink", mfu=68 / 312)
    assert t["days"] == pytest.approx(16.355, abs=1e-3)
    with pytest.raises(ValueError, match="mfu"):
        training_time(1e20, 8, mfu=1.5)


def test_flops_with_attention_and_recompute():
    N, D, L, h, s = 1e9, 1e6, 24, 2048, 1024
    assert training_flops(N, D, L, h, s)["flops"] == pytest.approx((6 * N + 12 * L * h * s) * D)
    full = training_flops(N, D, L, h, s, checkpointing="full")
    assert full["flops"] == pytest.approx((8 * N + 16 * L * h * s) * D)
    sel = training_flops(N, D, L, h, s, checkpointing="selective")
    assert sel["flops"] == pytest.approx((6 * N + 16 * L * h * s) * D)
    assert full["recompute_flops"] == pytest.approx((2 * N + 4 * L * h * s) * D)


def test_flop_formula_equals_matmul_count_of_a_tiny_gpt_step():
    """The engine counts every matmul; forward+backward must be 6N + 12·L·h·s per token, with
    N the matmul weights (12·L·h² + V·h, the tied LM head) - biases and lookups cost no matmul."""
    from minidist.device import Device
    L, h, V, T, B = 2, 32, 37, 16, 3
    model = model_mod.GPT(model_mod.GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=2, n_embd=h))
    idx = np.random.default_rng(0).integers(0, V, (B, T))
    dev = Device("laptop")
    with dev:
        _, loss = model(idx, idx)
        loss.backward()
    f = training_flops(12 * L * h * h + V * h, B * T, layers=L, hidden=h, seq=T)
    assert dev.matmul_flops == f["flops"]


def test_gpt2_param_count_matches_hand_enumeration_and_the_model():
    L, h, V, T = 3, 48, 50, 20
    shapes = [(V, h), (T, h)]                                   # wte (tied head), wpe
    for _ in range(L):
        shapes += [(h,), (h,), (h, 3 * h), (3 * h,), (h, h), (h,),        # ln_1, c_attn, c_proj
                   (h,), (h,), (h, 4 * h), (4 * h,), (4 * h, h), (h,)]    # ln_2, c_fc, c_proj
    shapes += [(h,), (h,)]                                      # ln_f
    expected = sum(int(np.prod(s)) for s in shapes)
    count = gpt2_param_count(L, h, V, T)
    assert count["total"] == expected
    assert count["non_embedding"] == expected - V * h - T * h
    for bias in (True, False):
        cfg = model_mod.GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=4, n_embd=h, bias=bias)
        n = sum(p.data.size for p in model_mod.GPT(cfg).parameters())
        assert gpt2_param_count(L, h, V, T, bias=bias)["total"] == n


# ---------------------------------------------------------------- pipeline bubble
def simulate(orders, p, tf=1.0, tb=1.0):
    """Run per-stage op lists [(kind, mb)] respecting the pipeline's data dependencies.

    F(i, j) needs F(i-1, j); B(i, j) needs B(i+1, j) (and F(i, j) earlier in the list).
    Returns (makespan, max micro-batches in flight on stage 0)."""
    end, free, pos = {}, [0.0] * p, [0] * p
    while any(pos[i] < len(orders[i]) for i in range(p)):
        progressed = False
        for i in range(p):
            if pos[i] == len(orders[i]):
                continue
            kind, j = orders[i][pos[i]]
            dep = None                              # the op of the neighbour stage this one waits for
            if kind == "F" and i > 0:
                dep = ("F", i - 1, j)
            elif kind == "B" and i < p - 1:
                dep = ("B", i + 1, j)
            if dep is not None and dep not in end:
                continue
            start = max(free[i], end.get(dep, 0.0))
            free[i] = end[(kind, i, j)] = start + (tf if kind == "F" else tb)
            pos[i] += 1
            progressed = True
        assert progressed, "deadlock"
    live = peak = 0
    for kind, _ in orders[0]:
        live += 1 if kind == "F" else -1
        peak = max(peak, live)
    return max(free), peak


def gpipe_orders(p, m):
    return [[("F", j) for j in range(m)] + [("B", j) for j in range(m)] for _ in range(p)]


def one_f_one_b_orders(p, m):
    orders = []
    for i in range(p):
        warm = min(p - i - 1, m)
        o = [("F", j) for j in range(warm)]
        for j in range(m - warm):                       # steady state: one forward, one backward
            o += [("F", warm + j), ("B", j)]
        o += [("B", j) for j in range(m - warm, m)]     # cool-down
        orders.append(o)
    return orders


@pytest.mark.parametrize("p,m", [(4, 8), (3, 5), (2, 1)])
def test_gpipe_and_1f1b_bubble_match_a_simulation(p, m):
    tf, tb = 1.0, 2.0                                     # B = input + weight gradient = 2 F
    for name, orders in (("gpipe", gpipe_orders(p, m)), ("1f1b", one_f_one_b_orders(p, m))):
        makespan, peak = simulate(orders, p, tf, tb)
        est = pipeline_bubble(name, p, m)
        assert 1 - m * (tf + tb) / makespan == pytest.approx(est["bubble_fraction"]), name
        assert peak == est["peak_in_flight"], name
    assert pipeline_bubble("gpipe", p, m)["bubble_relative"] == pytest.approx((p - 1) / m)


def test_other_schedules_bubble_formulas():
    p, m = 4, 8
    one = pipeline_bubble("1f1b", p, m)
    assert pipeline_bubble("interleaved_1f1b", p, m, v=2)["bubble_relative"] == pytest.approx((p - 1) / (2 * m))
    zb = pipeline_bubble("zb_h1", p, m)
    assert zb["bubble_time"] == pytest.approx(one["bubble_time"] / 3)     # a third of 1F1B's
    assert zb["peak_in_flight"] == one["peak_in_flight"] == p
    # synchronous flush: the V's staircase of p−1 half-size chunk forwards stays (the paper's 0 is asynchronous)
    zbv = pipeline_bubble("zb_v", p, m)
    assert zbv["bubble_time"] == pytest.approx((p - 1) / 2) and "post-validation" in zbv["note"]
    assert pipeline_bubble("dualpipe_v", p, m)["bubble_fraction"] == pytest.approx((p - 1) / (6 * m + p - 1))
    assert pipeline_bubble("naive", p, m)["bubble_fraction"] == pytest.approx((p - 1) / p)
    assert peak_in_flight("interleaved_1f1b", p, m, v=2) == pytest.approx(p + (p - 1) / 2)
    with pytest.raises(ValueError, match="divisible"):
        pipeline_bubble("interleaved_1f1b", 4, 6, v=2)
    with pytest.raises(ValueError, match="schedule"):
        pipeline_bubble("2f2b", 4, 8)


# ---------------------------------------------------------------- estimate(config)
CONFIG = {"model": {"n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 40, "block_size": 16},
          "data": {"seq_len": 16}, "train_micro_batch_size_per_gpu": 2,
          "gradient_accumulation_steps": 2, "zero_optimization": {"stage": 2},
          "fp16": {"enabled": True}, "optimizer": {"type": "AdamW"}}


def test_estimate_for_a_config_is_consistent_and_json_able():
    r = estimate(CONFIG, world_size=4)
    psi = 12 * 2 * 32 ** 2 + 13 * 2 * 32 + (40 + 16) * 32 + 2 * 32
    assert r["params"]["total"] == psi and r["dp"] == 4
    assert r["model_states"]["total"] == pytest.approx(2 * psi + (2 + 12) * psi / 4)
    # ZeRO-2 with 2 accumulation steps: 2 reduce-scatters + 1 all-gather, fp16 on the wire
    assert r["comm"]["dp_bytes"] == pytest.approx(2 * 3 * 3 / 4 * psi)
    assert r["flops"]["tokens"] == 2 * 16 * 2 * 4
    assert r["activations"]["per_layer"] == pytest.approx(table2(16, 2, 32, 4, 1, "none"))
    assert "model.n_layer" not in r["defaults_used"] and "device" in r["defaults_used"]
    assert json.loads(json.dumps(r))["params"]["total"] == psi
    slow = estimate(CONFIG, world_size=4, mfu=0.5)
    assert slow["time"]["compute_s_per_step"] == pytest.approx(2 * r["time"]["compute_s_per_step"])
    with pytest.raises(ValueError, match="parallel"):
        estimate({**CONFIG, "parallel": {"tensor": 3}}, world_size=4)


def test_estimate_accepts_the_trainers_filled_config():
    filled = cfg_mod.load_config({}, world_size=1)
    r = estimate(filled, world_size=1)
    # every key comes from the trainer's config, except, when the config leaves them to the
    # dataset (None), the vocabulary size and the text corpus's window length
    assert set(r["defaults_used"]) <= {"model.vocab_size", "data.seq_len"}
    assert ("model.vocab_size" in r["defaults_used"]) == (filled["model"]["vocab_size"] is None)
    assert r["inputs"]["micro_batch"] == filled["train_micro_batch_size_per_gpu"]
    assert r["inputs"]["seq_len"] == cfg_mod.data_config(filled)["seq_len"]
    task = cfg_mod.load_config({"data": {"dataset": "add", "n_digits": 4}, "model": {"block_size": 16}})
    assert estimate(task)["inputs"]["seq_len"] == 15 == cfg_mod.sequence_length(task)[0]   # 4+4+2 prompt, 6 answer, −1
    assert r["inputs"]["checkpointing"] == "none" and r["inputs"]["sequence_parallel"] is False


# ---------------------------------------------------------------- command line
def test_cli_json_reproduces_the_zero_paper():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "minidist.estimate", "--params", "7.5B", "--dp", "64",
                          "--zero", "all", "--precision", "fp16", "--json"],
                         capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    r = json.loads(out)
    assert [round(s["total"] / 1e9, 1) for s in r["model_states"]] == [120.0, 31.4, 16.6, 1.9]
    assert [c["dp_elements"] / PSI for c in r["comm"]] == pytest.approx([2 * 63 / 64] * 3 + [3 * 63 / 64])


def test_cli_table_and_derived_parameters(capsys):
    assert main(["--params", "7.5e9", "--dp", "64", "--zero", "all", "--offload"]) == 0
    text = capsys.readouterr().out
    for figure in ("120.0 GB", "1.9 GB", "host/rank"):
        assert figure in text
    main(["--layers", "2", "--hidden", "32", "--heads", "4", "--vocab", "40", "--seq", "16",
          "--zero", "3", "--dp", "2", "--pp", "2", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["params"] == 12 * 2 * 32 ** 2 + 13 * 2 * 32 + (40 + 16) * 32 + 2 * 32
    assert set(r["activations"]) == {"none", "selective", "full"}
    assert r["pipeline"] and r["model_states"][0]["stage"] == 3


def test_parse_count():
    assert parse_count("7.5B") == 7.5e9 and parse_count("350M") == 350e6
    assert parse_count("1.2T") == pytest.approx(1.2e12) and parse_count("7.5e9") == 7.5e9
    assert parse_count("125k") == 125e3


@pytest.mark.parametrize("argv,flag,fix", [
    (["--params", "1B", "--zero", "4"], "--zero", "0, 1, 2, 3 or all"),
    (["--params", "1B", "--dp", "0"], "--dp", "positive integer"),
    (["--params", "7.5Q"], "--params", "7.5B"),
    (["--dp", "8"], "--params", "--layers"),
    (["--params", "1B", "--layers", "10", "--pp", "4"], "--layers 10", "divides layers"),
    (["--params", "1B", "--heads", "6", "--tp", "4"], "--heads 6", "tensor-parallel degree"),
    (["--params", "1B", "--mfu", "2"], "--mfu", "(0, 1]"),
    # what the trainer refuses, the command line refuses too (each was accepted, exit 0)
    (["--layers", "2", "--hidden", "16", "--heads", "2", "--vocab", "50", "--seq", "8", "--experts", "4",
      "--capacity-factor", "inf"], "--capacity-factor", "finite number"),          # was an OverflowError
    (["--layers", "2", "--hidden", "16", "--heads", "2", "--vocab", "50", "--seq", "8", "--experts", "4",
      "--cp", "2"], "--experts with --cp", "use --cp 1"),
    (["--params", "1B", "--optimizer", "lamb", "--zero", "1"], "--optimizer lamb with --zero 1", "use --zero 0"),
    (["--params", "1B", "--offload", "--zero", "0"], "--offload with --zero 0", "use --zero 1, 2 or 3"),
    (["--pp", "2", "--schedule", "1f1b", "--virtual-stages", "2", "--micro-batches", "4"], "--virtual-stages 2",
     "use --schedule interleaved_1f1b"),
])
def test_cli_bad_input_names_the_flag_and_the_fix(argv, flag, fix, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and fix in err, err


@pytest.mark.parametrize("extra", [{"zero_optimization": {"stage": 1}},
                                   {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}},
                                   {"zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}}],
                         ids=["zero1", "zero2-bf16", "zero1-offload"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_without_momentum_is_charged_no_state(extra, momentum):
    """SGD's momentum defaults to 0 (PyTorch's): no buffer. The report's formula row, estimate()
    and the layout's estimate (grid3d) charge what the run holds, with and without momentum."""
    from minidist import distributed as dist
    from minidist.estimate import estimate
    from minidist.estimate.grid3d import estimate_for_config
    from minidist.report import build_report, rank_report
    from minidist.testing import train_steps
    cfg = {"model": {"n_layer": 1, "n_embd": 16, "n_head": 4, "block_size": 8},
           "data": {"dataset": "english", "seq_len": 8}, "steps": 1, "eval_iters": 1,
           "train_micro_batch_size_per_gpu": 2,
           "optimizer": {"type": "SGD", "params": {"lr": 0.01, "momentum": momentum}}, **extra}
    runs = dist.spawn(train_steps, 2, cfg, timeout=60)
    for r in runs:
        r["trainer"].final, r["trainer"].wall_time = {}, 0.0
    t = runs[0]["trainer"]
    rep = build_report(t, [rank_report(r["trainer"]) for r in runs])
    measured = rep["ranks"][0]["data_parallel"]["model_states"]
    formula = rep["data_parallel"]["formula"]["model_states"]
    if "bf16" not in extra and "offload_optimizer" not in extra["zero_optimization"]:     # fp32 on the device
        assert (measured["optimizer_states"] == 0) == (momentum == 0)                       # the case itself
    for key in ("optimizer_states", "host"):
        assert formula[key] == measured.get(key, 0)
    assert estimate(t.cfg, world_size=2)["model_states"]["optimizer_states"] == measured["optimizer_states"]
    grid = estimate_for_config(t.cfg, 2, t.model_config.vocab_size)["ranks"][0]["model_states"]
    if "offload_optimizer" not in extra["zero_optimization"]:            # grid3d: offload not modelled (a note)
        assert grid["optimizer_states"] == measured["optimizer_states"]


def test_cli_marks_the_interleaved_schedule_it_was_given(capsys):
    """--schedule interleaved_1f1b with the default --virtual-stages 1 marks v = 1 as chosen
    (it marked v = 2, a bubble of 15.8% for the 27.3% the config path gives)."""
    assert main(["--pp", "4", "--schedule", "interleaved_1f1b", "--micro-batches", "8"]) == 0
    chosen = [line for line in capsys.readouterr().out.splitlines() if "<-" in line]
    assert len(chosen) == 1 and "interleaved_1f1b (v=1)" in chosen[0]
    from minidist.estimate import estimate
    e = estimate({"model": {"n_layer": 4, "n_embd": 32, "n_head": 4},
                  "parallel": {"pipeline": 4, "schedule": "interleaved_1f1b"}, "gradient_accumulation_steps": 8}, 4)
    assert f"{100 * e['pipeline']['bubble_fraction']:.1f}%" in chosen[0]


def test_cli_recomputed_flops_of_a_mixture_of_experts_count_the_experts(capsys):
    """Full recomputation re-runs the MoE blocks' expert slots; the command line counted a dense
    block's 12h² (1.70 MFLOP against the run's 2.77 MFLOP); it now equals the config path."""
    from minidist.estimate import estimate
    cfg = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 8, "vocab_size": 75,
                     "moe": {"num_experts": 4, "top_k": 2}},
           "data": {"seq_len": 8}, "train_micro_batch_size_per_gpu": 2,
           "activation_checkpointing": {"granularity": "full"}, "zero_optimization": {"stage": 0}}
    assert main(["--layers", "2", "--hidden", "16", "--heads", "2", "--seq", "8", "--vocab", "75",
                 "--micro-batch", "2", "--precision", "fp32", "--zero", "0", "--experts", "4", "--top-k", "2",
                 "--checkpointing", "full", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["flops_per_step"]["recompute_flops"]
    assert got == pytest.approx(estimate(cfg, 1)["flops"]["recompute_flops"], rel=1e-12)
    dense = json.loads((main(["--layers", "2", "--hidden", "16", "--heads", "2", "--seq", "8", "--vocab", "75",
                              "--micro-batch", "2", "--precision", "fp32", "--zero", "0", "--checkpointing", "full",
                              "--json"]), capsys.readouterr().out)[1])["flops_per_step"]["recompute_flops"]
    assert got > dense                                                   # the case itself


def test_cli_notes_what_a_flag_does_not_change(capsys):
    assert main(["--layers", "2", "--hidden", "16", "--heads", "2", "--seq", "8", "--vocab", "75", "--offload",
                 "--top-k", "1", "--make-vocab-size-divisible-by", "128"]) == 0
    err = capsys.readouterr().err
    assert "per-pipeline-rank table is not shown with --offload" in err
    assert "--top-k/--capacity-factor/--every-n-layers has no effect without --experts" in err
    assert "--make-vocab-size-divisible-by has no effect with --tp 1" in err


@pytest.mark.parametrize("precision,extra", [("fp32", {}), ("bf16", {"bf16": {"enabled": True}})])
def test_the_reports_tp_estimate_column_is_the_command_line_with_the_runs_precision(precision, extra, capsys):
    """README (tensor parallelism): the report's estimate column is `python -m minidist.estimate
    --tp N [--sp] --precision P` with the run's precision (it said 16-bit activations: an fp32
    run's estimate has 4-byte ones)."""
    from minidist.estimate import estimate
    cfg = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 8}, "data": {"seq_len": 8},
           "train_micro_batch_size_per_gpu": 1, "parallel": {"tensor": 2, "sequence_parallel": True}, **extra}
    e = estimate(cfg, 4)
    assert main(["--layers", "2", "--hidden", "16", "--heads", "2", "--seq", "8", "--vocab", "75", "--tp", "2",
                 "--sp", "--dp", "2", "--precision", precision, "--zero", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["activations"]["none"]["total"] == e["activations"]["total"]
    assert out["comm"][0]["tp_bytes"] == e["comm"]["tp_bytes"]
