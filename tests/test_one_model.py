"""One model, one grid: the GPT's forward exists once and every layout reuses it; how each
parameter is split is an attribute of the parameter; what the one-rank model offers
(``return_hidden``, evaluation, generation) works under tensor and pipeline parallelism."""
import ast
import copy
import pathlib

import numpy as np
import pytest

import minidist
from minidist import distributed as dist
from minidist.layers import Split, split_of
from minidist.model import GPT, GPTConfig
from minidist.parallel.grid import ProcessGrid
from minidist.parallel.tensor import TensorParallelLayers
from minidist.tensor import Tensor
from minidist.training.trainer import Trainer

pytestmark = [pytest.mark.grid, pytest.mark.timeout(120)]

SOURCE = pathlib.Path(minidist.__file__).parent
CFG = GPTConfig(block_size=8, vocab_size=13, n_layer=2, n_head=4, n_embd=16)


def _classes_and_calls():
    classes, grids = [], []
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes.append((node.name, path.relative_to(SOURCE).as_posix()))
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "ProcessGrid":
                grids.append(path.relative_to(SOURCE).as_posix())
    return classes, grids


def test_the_block_exists_once_and_the_grid_is_built_in_one_place():
    classes, grids = _classes_and_calls()
    blocks = [where for name, where in classes if "Block" in name or name.endswith("Attention") or name.endswith("GPT")]
    assert sorted(blocks) == ["model.py", "model.py", "model.py"], blocks     # Block, CausalSelfAttention, GPT
    # the library builds it once, in the trainer; the teaching code (demo chapters, exercises)
    # builds one as a user would, to show a grid without training
    assert [g for g in grids if not g.startswith(("demo/", "exercises/"))] == ["training/trainer.py"], grids
    for path in SOURCE.rglob("*.py"):                                         # no split rule keyed on names
        text = path.read_text()
        assert "SPLITS" not in text and 'endswith("wte.weight")' not in text, path


def test_splits_are_attributes_of_the_parameters_of_the_one_rank_model():
    model = GPT(CFG)
    got = {name: split_of(p) for name, p in model.named_parameters()}
    assert got["transformer.h.0.attn.c_attn.weight"] == Split(1, 3)          # columns, by heads of q | k | v
    assert got["transformer.h.0.attn.c_attn.bias"] == Split(0, 3)
    assert got["transformer.h.1.mlp.c_fc.weight"] == Split(1)
    assert got["transformer.h.1.mlp.c_proj.weight"] == got["transformer.h.0.attn.c_proj.weight"] == Split(0)
    assert got["transformer.wte.weight"] == Split(0, 1, padded=True)         # vocabulary rows, padded
    replicated = {n for n, s in got.items() if s is None}
    assert replicated == {n for n in got if "ln_" in n or n.endswith("c_proj.bias") or "wpe" in n}
    assert not any(p.shared or p.sequence_parallel or p.frozen for p in model.parameters())
    # a last stage's copy of the tied embedding is "shared": its first stage counts it
    last = GPT(CFG, layer_ids=[1], pre_process=False)
    assert last.transformer.wte.weight.shared and [n for n, _ in last.named_parameters()][:2] == \
        ["transformer.wte.weight", "transformer.h.1.ln_1.weight"]


def _hidden_and_grads(comm, sp, ids, targets):
    """Hidden states and gradients of a loss that uses them (CE + Σ mean(h²), as Patient KD
    adds a loss on every block's output), under tp = comm.size."""
    layers = TensorParallelLayers(ProcessGrid(comm, tp=comm.size).tp, sequence_parallel=sp)
    model = GPT(CFG, seed=3, dtype=np.float64, layers=layers)
    _, loss, hidden = model(ids, targets, return_hidden=True)
    for h in hidden:
        loss = loss + (h * h).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return [h.data for h in hidden], float(loss.data), grads, {n: split_of(p) for n, p in model.named_parameters()}


@pytest.mark.parametrize("sp", [False, True], ids=["tp2", "tp2+sp"])
def test_return_hidden_under_tensor_parallelism_equals_one_rank(sp):
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, 13, (2, 8)), rng.integers(0, 13, (2, 8))
    one = GPT(CFG, seed=3, dtype=np.float64)
    _, loss, hidden = one(ids, targets, return_hidden=True)
    for h in hidden:
        loss = loss + (h * h).mean()
    loss.backward()
    runs = dist.spawn(_hidden_and_grads, 2, sp, ids, targets)
    for h2, l2, _, _ in runs:
        assert abs(l2 - float(loss.data)) <= 1e-12
        for a, b in zip(h2, hidden):                           # every position, on every tp rank
            np.testing.assert_allclose(a, b.data, rtol=0, atol=1e-12)
    from minidist.parallel.split import unshard
    for name, p in one.named_parameters():
        joined = unshard([g[name] for _, _, g, _ in runs], runs[0][3][name], CFG.vocab_size)
        np.testing.assert_allclose(joined, p.grad, rtol=0, atol=1e-12, err_msg=name)


def test_a_pipeline_stage_holds_only_its_blocks_and_runs_the_same_forward():
    from minidist.device import Device
    one = GPT(CFG, seed=3, dtype=np.float64)
    dev = Device("laptop")
    with dev:
        first = GPT(CFG, seed=3, dtype=np.float64, layer_ids=[0], post_process=False)
    assert dev.memory.current["parameters"] == 8 * first.num_parameters()
    assert first.num_parameters() == sum(p.size for n, p in one.named_parameters() if ".h.1." not in n
                                         and "ln_f" not in n)
    last = GPT(CFG, seed=3, dtype=np.float64, layer_ids=[1], pre_process=False)
    ids = np.random.default_rng(1).integers(0, 13, (2, 8))
    x = first.blocks(first.embed(ids))
    hidden = []
    _, loss = last.head(last.blocks(Tensor(x.data), hidden=hidden), ids)
    _, want, want_hidden = one(ids, ids, return_hidden=True)
    assert float(loss.data) == float(want.data)                   # the same ops in the same order
    assert np.array_equal(hidden[0].data, want_hidden[1].data)


def _evaluate(comm, cfg):
    trainer = Trainer(copy.deepcopy(cfg), comm)
    trainer.train_step(0)
    return trainer.evaluate(), trainer.full_parameters()


def test_evaluation_and_generation_under_3d_equal_one_rank():
    """After a 3D step, every rank's validation loss and exact-match (greedy generation, the
    whole logits gathered over tp) equal those of one rank holding the same weights."""
    cfg = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 4, "block_size": 16},
           "data": {"dataset": "copy", "n_digits": 3}, "dtype": "float64", "eval_iters": 2,
           "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
           "parallel": {"tensor": 2, "pipeline": 2}}
    runs = dist.spawn(_evaluate, 8, cfg)
    one = Trainer({**cfg, "parallel": {}})              # the same micro-batch: the same eval batches
    one.model.load_state_dict(runs[0][1])
    want = one.evaluate()
    for got, _ in runs:
        assert abs(got["val_loss"] - want["val_loss"]) <= 1e-12 * want["val_loss"]
        assert got["exact_match"] == want["exact_match"]
