"""Context parallelism (minidist.parallel.context): ring attention and Ulysses equal one-rank
attention and an independent scaled-dot-product attention written here (float64, 1e-12),
causal and not, gradients included; the ring's messages go to the next rank only and every
rank sends the formulas' bytes (minidist.estimate.context); training on 2 and 4 context-parallel
ranks — alone, with data and with tensor parallelism — equals one rank after every step
(relative ≤ 1e-9), in-process and under mpirun; activation bytes per rank fall as 1/cp; bad
input is refused on every rank, naming the fix."""
import copy
import json

import numpy as np
import pytest
from _attention import reference_attention
from _mpi import run_mpi

from minidist import distributed as dist
from minidist import functional as F
from minidist.autocast import autocast
from minidist.estimate.context import attention_elements, context_activation_memory, context_bytes_per_step
from minidist.layers import Layers
from minidist.model import GPT, GPTConfig
from minidist.parallel.context import (ContextParallelLayers, block_attention, merge_blocks, positions,
                                       ring_attention, ulysses_attention, work)
from minidist.estimate.cli import main as estimate_main
from minidist.report import context_summary, rank_report
from minidist.tensor import Tensor
from minidist.testing import train_steps
from minidist.training.config import ConfigError, load_config

pytestmark = [pytest.mark.context, pytest.mark.timeout(120)]

B, NH, T, HS = 2, 4, 16, 3
RNG = np.random.default_rng(0)
Q, K, V, G = (RNG.normal(size=(B, NH, T, HS)) for _ in range(4))


def one_rank(causal):
    q, k, v = (Tensor(a.copy(), requires_grad=True) for a in (Q, K, V))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    (y * Tensor(G)).sum().backward()
    return y.data, q.grad, k.grad, v.grad


def _attend(comm, algorithm, causal):
    pos = positions(comm.rank, comm.size, T, "zigzag" if algorithm == "ring" else "contiguous")
    q, k, v = (Tensor(a[:, :, pos].copy(), requires_grad=True) for a in (Q, K, V))
    fn = ring_attention if algorithm == "ring" else ulysses_attention
    y = fn(q, k, v, comm, causal)
    (y * Tensor(G[:, :, pos])).sum().backward()
    sent = [(m.op, m.peer, m.nbytes) for m in comm.log.messages()]
    return pos, (y.data, q.grad, k.grad, v.grad), sent


def test_layouts_and_the_ring_schedule_as_data():
    assert [list(positions(r, 4, 16, "zigzag")) for r in (0, 3)] == [[0, 1, 14, 15], [6, 7, 8, 9]]
    assert list(positions(1, 4, 16, "contiguous")) == [4, 5, 6, 7]
    zig, flat = work(4, "zigzag"), work(4, "contiguous")
    assert list(zig.sum(axis=1)) == [2 * 4 + 1] * 4                 # every rank the same 2·cp + 1 half-blocks
    assert list(flat.sum(axis=1)) == [4, 8, 12, 16]                  # contiguous: rank r does (r + 1) blocks
    assert list(work(4, "zigzag", causal=False).sum(axis=1)) == [16] * 4


def test_the_online_softmax_merge_of_two_blocks_is_the_softmax_over_both():
    q, k, v = Q[0, 0], K[0, 0], V[0, 0]
    out, lse = merge_blocks(*block_attention(q, k[:5], v[:5]), *block_attention(q, k[5:], v[5:]))
    want, want_lse = block_attention(q, k, v)
    assert np.abs(out - want).max() < 1e-12 and np.abs(lse - want_lse).max() < 1e-12


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("algorithm", ["ring", "ulysses"])
def test_attention_equals_one_rank_and_an_independent_sdpa_and_sends_the_formulas_bytes(algorithm, causal):
    independent, minidist_one = reference_attention(Q, K, V, G, causal), one_rank(causal)
    for cp in (2, 4):
        for r, (pos, got, sent) in enumerate(dist.spawn(_attend, cp, algorithm, causal)):
            for name, mine, a, b in zip(("y", "dq", "dk", "dv"), got, independent, minidist_one):
                assert np.abs(mine - a[:, :, pos]).max() <= 1e-12, (cp, r, name)
                assert np.abs(mine - b[:, :, pos]).max() <= 1e-12, (cp, r, name)
            e = attention_elements(algorithm, cp, B, T, NH * HS)
            assert sum(n for *_, n in sent) == (e["forward"] + e["backward"]) * 8
            assert len(sent) == e["messages_forward"] + e["messages_backward"]
            if algorithm == "ring":                                  # a ring: only ever to the next rank
                assert {peer for _, peer, _ in sent} == {(r + 1) % cp}
                assert [op for op, *_ in sent].count("ring_attention") == cp - 1
            else:                                                    # all-to-all: every other rank, alike
                assert sorted(peer for _, peer, _ in sent) == sorted([p for p in range(cp) if p != r] * 8)


# -- training ------------------------------------------------------------------------------------
CFG = {"model": {"n_layer": 1, "n_embd": 16, "n_head": 4, "block_size": 16, "dropout": 0.1},
       "data": {"dataset": "english", "seq_len": 16}, "steps": 2, "eval_iters": 1, "dtype": "float64",
       "gradient_accumulation_steps": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}}
CASES = [("ring", 2, 1, 1), ("ring", 4, 1, 1), ("ulysses", 2, 1, 1), ("ulysses", 4, 1, 1),
         ("ring", 2, 2, 1), ("ulysses", 2, 2, 1), ("ring", 2, 1, 2), ("ulysses", 2, 1, 2)]


def cp_config(algorithm, cp, dp, tp, micro=2):
    cfg = copy.deepcopy(CFG)
    cfg["parallel"] = {"context": {"size": cp, "algorithm": algorithm}, "tensor": tp}
    cfg["train_micro_batch_size_per_gpu"] = micro
    return cfg


def _train(comm, cfg):
    r = train_steps(comm, cfg)
    t = r["trainer"]
    r["context"] = context_summary(t) if comm is not None and t.grid.cp_size > 1 else None
    r["report"] = rank_report(t) if comm is not None else None
    r["eval"] = t.evaluate()
    return r


_ONE = {}


def one_rank_run(micro):
    if micro not in _ONE:
        _ONE[micro] = _train(None, {**copy.deepcopy(CFG), "train_micro_batch_size_per_gpu": micro})
    return _ONE[micro]


@pytest.mark.parametrize("algorithm,cp,dp,tp", CASES, ids=[f"{a}-cp{c}-dp{d}-tp{t}" for a, c, d, t in CASES])
def test_training_equals_one_rank_with_the_formulas_bytes(algorithm, cp, dp, tp):
    ref = one_rank_run(2 * dp)
    runs = dist.spawn(_train, cp * dp * tp, cp_config(algorithm, cp, dp, tp), timeout=60)
    for r in runs:
        for step, params in enumerate(r["params"]):
            worst = max(float(np.max(np.abs(params[k] - ref["params"][step][k])) / np.max(np.abs(ref["params"][step][k])))
                        for k in params)
            assert worst <= 1e-9, (step, r["trainer"].rank, worst)
        c = r["context"]
        assert c["bytes_sent_per_step"] == c["bytes_sent_per_step_expected"] == context_bytes_per_step(
            algorithm, cp, 1, 2, 16, 16, micro_batches=2, bytes_per_element=8, tp=tp)["bytes_per_step"] > 0
        assert r["report"]["context_parallel"] == c                   # the train report's section
        if tp == 1:                                                  # the step: attention + the dp × cp reduction
            assert r["history"][-1]["bytes_sent"] == c["bytes_sent_per_step"] + r["expected_bytes_sent"]
            assert r["report"]["data_parallel"]["bytes_sent_per_step"] == r["expected_bytes_sent"]
        if dp == 1:                                                  # evaluation reads whole sequences
            assert r["eval"]["val_loss"] == pytest.approx(ref["eval"]["val_loss"], rel=1e-12)
    # the loss of a step: the mean over the ranks of what each holds (its part of its slice)
    for step, h in enumerate(ref["history"]):
        got = np.mean([r["history"][step]["loss"] for r in runs])
        assert got == pytest.approx(h["loss"], rel=1e-12)


# -- mixed precision: the bytes on the wire -------------------------------------------------------
def _attend_autocast(comm, algorithm, fmt):
    pos = positions(comm.rank, comm.size, T, "zigzag" if algorithm == "ring" else "contiguous")
    q, k, v = (Tensor(a[:, :, pos].copy(), requires_grad=True) for a in (Q, K, V))
    with autocast(fmt):                                # forward only, as the trainer runs it
        y = (ring_attention if algorithm == "ring" else ulysses_attention)(q, k, v, comm)
    (y * Tensor(G[:, :, pos])).sum().backward()
    return [(m.op, m.tag, m.nbytes) for m in comm.log.messages() if m.direction == "send"]


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_under_mixed_precision_kv_travel_in_16_bits_and_the_rings_dk_dv_in_fp32(fmt):
    """Backward runs outside autocast: K, V still go in the forward's format, the ring's partial
    dK, dV as fp32 accumulators (ring-flash-attention's), Ulysses' gradients in 16 bits."""
    n = B * (T // 2) * NH * HS                                    # one of q, k, v on a rank, cp = 2
    ring, ulysses = dist.spawn(_attend_autocast, 2, "ring", fmt)[0], dist.spawn(_attend_autocast, 2, "ulysses", fmt)[0]
    assert ring == [("ring_attention", 0, 2 * n * 2), ("ring_attention_backward", 0, 2 * n * 2),
                    ("ring_attention_backward", 1, 2 * n * 4)]
    assert sum(b for *_, b in ulysses) == 8 * (n // 2) * 2 and len(ulysses) == 8
    for algorithm, sent in (("ring", ring), ("ulysses", ulysses)):
        assert sum(b for *_, b in sent) == context_bytes_per_step(algorithm, 2, 1, B, T, NH * HS,
                                                                  bytes_per_element=2)["bytes_per_step"]


def _train_cp(comm, cfg):
    return context_summary(train_steps(comm, cfg)["trainer"])


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_the_reports_cp_row_equals_the_formula_in_fp16_and_bf16(fmt):
    # n = b·(s/cp)·h = 2·8·16: ring 2n·2 forward, 2n·2 + 2n·4 backward; Ulysses 4·(n/2)·2 each way
    n = 2 * 8 * 16
    for algorithm, want in (("ring", 2 * n * 2 + 2 * n * 2 + 2 * n * 4), ("ulysses", 2 * 4 * (n // 2) * 2)):
        cfg = {**copy.deepcopy(CFG), "dtype": "float32", "gradient_accumulation_steps": 1, "steps": 1, fmt: {"enabled": True},
               "train_micro_batch_size_per_gpu": 2,
               "parallel": {"context": {"size": 2, "algorithm": algorithm}}}
        for c in dist.spawn(_train_cp, 2, cfg, timeout=60):
            assert c["bytes_sent_per_step"] == c["bytes_sent_per_step_expected"] == want, (algorithm, c)


# -- memory --------------------------------------------------------------------------------------
MODEL = GPTConfig(block_size=32, vocab_size=13, n_layer=2, n_head=4, n_embd=16, dropout=0.1)
IDX, TARGETS = (np.random.default_rng(1).integers(0, 13, (2, 32)) for _ in range(2))


def _activations(comm, algorithm):
    layers = ContextParallelLayers(Layers(), comm, algorithm) if algorithm else Layers()
    model = GPT(MODEL, seed=0, dtype=np.float64, layers=layers)
    model.set_dropout_key(0, 0, 0)
    loss = model(IDX, TARGETS)[1]
    held = comm.device.memory.current["activations"]
    loss.backward()
    return held, comm.device.memory.max_by_category["activations"]


def test_activation_bytes_per_rank_fall_as_one_over_cp():
    plain = dist.spawn(_activations, 1, None)[0]
    for algorithm in ("ring", "ulysses"):
        at = {cp: dist.spawn(_activations, cp, algorithm) for cp in (1, 2, 4)}
        for cp in (2, 4):
            assert all(held * cp == at[1][0][0] for held, _ in at[cp]), (algorithm, cp, at)
            assert all(peak * cp <= at[1][0][1] for _, peak in at[cp])
        if algorithm == "ulysses":                                   # the one-rank kernel on a/cp heads
            assert at[1][0] == plain
        else:                                                        # no (s × s) scores kept at all
            assert at[1][0][0] < plain[0]
        est = [context_activation_memory(32, 2, 16, 4, 2, cp, algorithm)["total"] for cp in (1, 2, 4)]
        assert est[0] / est[2] == pytest.approx(4, rel=0.05 if algorithm == "ring" else 1e-12)


# -- bad input -----------------------------------------------------------------------------------
def _refusal(comm, cfg):
    try:
        load_config(copy.deepcopy(cfg), comm.size)
    except ConfigError as e:
        return e.key, str(e)
    return None


BAD = [
    ({"parallel": {"context": {"size": 4}}, "data": {"seq_len": 12}, "model": {"block_size": 16}}, 4,
     "parallel.context.size", "use a sequence length that is a multiple of 8"),
    ({"parallel": {"context": {"size": 4, "algorithm": "ulysses"}}, "model": {"n_head": 2}}, 4,
     "parallel.context.size", "choose parallel.context.size among [1, 2] or parallel.context.algorithm 'ring'"),
    ({"parallel": {"context": {"size": 2}}}, 3, "parallel.context.size", "use a world size that is a multiple of 2"),
    ({"parallel": {"context": {"size": 2}, "tensor": 4, "sequence_parallel": True}, "data": {"seq_len": 12},
      "model": {"block_size": 16}}, 8, "parallel.sequence_parallel", "a multiple of 8"),
    ({"parallel": {"context": {"size": 2, "algorithm": "striped"}}}, 2, "parallel.context.algorithm",
     "choose one of ['ring', 'ulysses']"),
]


@pytest.mark.parametrize("patch,world,key,words", BAD, ids=["zigzag-chunks", "ulysses-heads", "world", "sp", "name"])
def test_bad_input_is_refused_on_every_rank_naming_the_fix(patch, world, key, words):
    cfg = {"model": {"n_layer": 1, "n_embd": 16, "n_head": 4, "block_size": 16}, "data": {"seq_len": 16}}
    for section, values in patch.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    errors = dist.spawn(_refusal, world, cfg, timeout=30)
    assert len(set(errors)) == 1 and errors[0] is not None, errors
    assert errors[0][0] == key and words in errors[0][1], errors[0]


def test_the_attention_functions_refuse_shapes_they_cannot_split():
    def bad(comm):
        q = Tensor(np.zeros((1, 3, 5, 2)))
        out = []
        empty = Tensor(np.zeros((1, 3, 0, 2)))          # no position on a rank: nothing to attend
        for call in (lambda: ring_attention(q, q, q, comm), lambda: ulysses_attention(q, q, q, comm),
                     lambda: ring_attention(q, Tensor(np.zeros((1, 3, 4, 2))), q, comm),
                     lambda: ring_attention(empty, empty, empty, comm)):
            with pytest.raises(ValueError) as e:
                call()
            out.append(str(e.value))
        return out
    ring, ulysses, shapes, none = dist.spawn(bad, 2)[0]
    assert "sequence length 0 is shorter than the 4 chunks" in none
    assert "not divisible by 4" in ring and "multiple of 4" in ring
    assert "3 heads are not divisible by cp = 2" in ulysses and "'ring'" in ulysses
    assert "of one shape" in shapes


@pytest.mark.estimate
def test_the_estimator_takes_cp_and_refuses_what_the_trainer_refuses(capsys):
    shape = ["--layers", "2", "--hidden", "16", "--heads", "4", "--vocab", "65", "--precision", "fp32"]
    for algorithm in ("ring", "ulysses"):
        assert estimate_main(shape + ["--seq", "16", "--cp", "4", "--cp-algorithm", algorithm, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["n_gpus"] == 4 and out["context"]["bytes"] == context_bytes_per_step(algorithm, 4, 2, 1, 16, 16, 1, 4)
        assert out["context"]["activations"]["none"]["total"] < out["activations"]["none"]["total"] / 2
    for argv, words in ((["--seq", "14", "--cp", "2"], "not divisible by 4"),
                        (["--seq", "16", "--cp", "2", "--pp", "2"], "--cp with --pp > 1"),
                        (["--seq", "16", "--cp", "8", "--cp-algorithm", "ulysses"], "not divisible by cp = 8")):
        with pytest.raises(SystemExit) as e:
            estimate_main(shape + argv)
        assert e.value.code == 2 and words in capsys.readouterr().err


# -- mpirun --------------------------------------------------------------------------------------
SCRIPT = """
import json, sys
import numpy as np
from minidist import distributed as dist
from minidist.testing import train_steps

cfg, out = json.loads(sys.argv[1]), sys.argv[2]

def main(comm):
    r = train_steps(comm, cfg)
    tr = r["trainer"]
    sent = [[c.op, c.bytes_sent] for c in tr.comm.log.collectives if c.group == tr.grid.cp.group]
    np.savez(f"{out}/rank{comm.rank}.npz", **{k: v for k, v in r["params"][-1].items()})
    with open(f"{out}/rank{comm.rank}.json", "w") as f:
        json.dump({"cp": sent, "coords": tr.grid.coords}, f)

dist.run_main(main)
"""


@pytest.mark.mpi
def test_ring_cp2_with_dp2_under_mpirun_equals_one_rank_and_in_process(tmp_path):
    cfg = cp_config("ring", 2, 2, 1)
    script = tmp_path / "cp_mpi.py"
    script.write_text(SCRIPT)
    p = run_mpi(4, [script, json.dumps(cfg), tmp_path], timeout=100)
    assert p.returncode == 0, p.stderr
    ref = one_rank_run(4)["params"][-1]
    inproc = dist.spawn(train_steps, 4, cfg)
    for r in range(4):
        mine = np.load(tmp_path / f"rank{r}.npz")
        assert all(np.array_equal(mine[k], inproc[r]["params"][-1][k]) for k in ref)      # MPI computes what threads do
        assert max(float(np.max(np.abs(mine[k] - ref[k])) / np.max(np.abs(ref[k]))) for k in ref) <= 1e-9
        info = json.loads((tmp_path / f"rank{r}.json").read_text())
        tr = inproc[r]["trainer"]
        assert info["coords"] == {"dp": r // 2, "cp": r % 2, "pp": 0, "tp": 0}
        assert info["cp"] == [[c.op, c.bytes_sent] for c in tr.comm.log.collectives if c.group == tr.grid.cp.group]


@pytest.mark.parametrize("granularity,method,num_layers", [("full", "block", 1), ("full", "block", 2),
                                                          ("full", "uniform", 2), ("selective", "uniform", 1),
                                                          ("none", "uniform", 1)])
def test_the_estimators_cp_bytes_follow_the_recompute_method(granularity, method, num_layers, capsys):
    """Full recomputation with Megatron's ``block`` method re-runs only the first ``num_layers``
    blocks, so only they send their attention's forward again; ``estimate()`` and the layout's
    estimate (grid3d) count those, and equal what the run sends (they counted every layer)."""
    from minidist.estimate import estimate
    from minidist.estimate.grid3d import estimate_for_config
    cfg = {"model": {"n_layer": 3, "n_embd": 16, "n_head": 4, "block_size": 4, "dropout": 0.0},
           "data": {"dataset": "english", "seq_len": 4}, "steps": 1, "eval_iters": 1,
           "train_micro_batch_size_per_gpu": 2, "parallel": {"context": {"size": 2, "algorithm": "ring"}},
           "activation_checkpointing": {"granularity": granularity, "method": method, "num_layers": num_layers}}
    runs = dist.spawn(train_steps, 2, cfg, timeout=60)
    t = runs[0]["trainer"]
    sent = context_summary(t)["bytes_sent_per_step"]
    assert estimate(cfg, 2)["context"]["bytes_per_step"] == sent
    assert estimate_for_config(t.cfg, 2, t.model_config.vocab_size)["ranks"][0]["bytes_sent"]["context_parallel"] == sent
    every = context_bytes_per_step("ring", 2, 3, 2, 4, 16, 1, 4, checkpointing=granularity)["bytes_per_step"]
    assert (sent < every) == (method == "block" and num_layers < 3)         # the case itself
    assert estimate_main(["--layers", "3", "--hidden", "16", "--heads", "4", "--seq", "4", "--vocab", "75",
                          "--micro-batch", "2", "--cp", "2", "--precision", "fp32", "--checkpointing", granularity,
                          "--checkpointing-method", method, "--checkpointing-layers", str(num_layers),
                          "--json"]) == 0                              # the command line counts the same
    assert json.loads(capsys.readouterr().out)["context"]["bytes"]["bytes_per_step"] == sent
