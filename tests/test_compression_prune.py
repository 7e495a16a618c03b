"""Pruning (issue 26): masks equal an independently computed ranking, the sparsity is exactly the
one asked, pruned weights stay zero through fine-tuning in the Trainer; structured pruning
removes heads and channels for real and saves the bytes and FLOPs of its formula, unstructured
saves nothing without sparse kernels."""
import numpy as np
import pytest

from minidist.compression import costs, prune, structured
from minidist.compression.targets import copy_model, linear_layers, measure
from minidist.model import GPT, GPTConfig
from minidist.training.trainer import Trainer

pytestmark = pytest.mark.compression

CFG = GPTConfig(block_size=16, vocab_size=20, n_layer=2, n_head=4, n_embd=16)
TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16}


def ranking_oracle(scores: dict, sparsity: float, scope: str) -> dict:
    """Sort (score, position) pairs in plain Python; the first round(s·n) are pruned."""
    groups = [[name] for name in scores] if scope == "layer" else [list(scores)]
    keep = {n: [True] * scores[n].size for n in scores}
    for names in groups:
        items = [(float(v), pos, n, i) for pos, (n, i) in
                 enumerate((n, i) for n in names for i in range(scores[n].size))
                 for v in [scores[n].reshape(-1)[i]]]
        k = round(sparsity * len(items))                     # Python's round: half to even
        for _, _, n, i in sorted(items)[:k]:
            keep[n][i] = False
    return {n: np.array(v).reshape(scores[n].shape) for n, v in keep.items()}


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    w = {"a": rng.normal(size=(6, 10)), "b": 0.3 * rng.normal(size=(10, 4)), "c": rng.normal(size=(5, 5))}
    w["a"][0, :4] = 0.125                                    # ties: the lower position goes first
    w["c"][2, 2] = -0.125
    return w


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 1.0])
def test_magnitude_masks_equal_the_ranking_and_prune_exactly_what_was_asked(scope, sparsity):
    w = _weights()
    scores = {n: np.abs(v) for n, v in w.items()}
    masks = prune.masks_from_scores(scores, sparsity, scope)
    want = ranking_oracle(scores, sparsity, scope)
    assert all(np.array_equal(masks[n], want[n]) for n in w)
    if scope == "layer":
        assert all(int((~masks[n]).sum()) == round(sparsity * w[n].size) for n in w)
    n = sum(v.size for v in w.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * n) or scope == "layer"


def test_global_scope_prunes_small_layers_harder():
    masks = prune.masks_from_scores({n: np.abs(v) for n, v in _weights().items()}, 0.5, "global")
    assert (~masks["b"]).mean() >= 0.75 > 0.5 > (~masks["a"]).mean()          # "b" holds the small weights


def test_taylor_scores_are_summed_absolute_weight_times_gradient_per_batch():
    model = GPT(CFG, seed=4)
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 20, (2, 8)), rng.integers(0, 20, (2, 8))) for _ in range(3)]
    params = prune.prunable(model)
    assert list(params) == [f"transformer.h.{i}.{m}.weight" for i in range(2)
                            for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    scores = prune.taylor_scores(model, params, batches)
    want = {n: np.zeros(p.shape) for n, p in params.items()}
    for x, y in batches:                                                     # each batch alone
        fresh = copy_model(model).train()
        fresh(x, y)[1].backward()
        for n, p in prune.prunable(fresh).items():
            want[n] += np.abs(p.data.astype(np.float64) * p.grad)
    assert all(np.allclose(scores[n], want[n], rtol=1e-6, atol=0) for n in params)
    assert all(p.grad is None for p in model.parameters())
    masks = prune.masks_from_scores(scores, 0.6, "global")
    assert all(np.array_equal(masks[n], m) for n, m in ranking_oracle(scores, 0.6, "global").items())


def _trainer(steps=4, cls=Trainer, **kw):
    return cls({"steps": steps, "model": TINY, "data": {"seq_len": 16}, "train_micro_batch_size_per_gpu": 2,
                "eval_iters": 1, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}}, **kw)


def test_pruned_weights_stay_exactly_zero_through_fine_tuning():
    tr = _trainer()
    pruning = prune.prune_weights(tr.model, 0.6, "magnitude", "global")
    params = prune.prunable(tr.model)
    assert prune.measured_sparsity(params) == round(0.6 * sum(p.size for p in params.values())) / sum(
        p.size for p in params.values())
    seen = []

    def after_step(trainer, step):
        pruning.after_step(trainer, step)
        seen.append(all((p.data[~pruning.masks[n]] == 0).all() for n, p in params.items()))
    tr.fit(progress=False, on_step=after_step)
    assert seen == [True] * 4
    kept = [p.data[pruning.masks[n]] for n, p in params.items()]
    assert all((k != 0).all() for k in kept)                                # the others trained on


def test_without_the_masks_adam_would_move_pruned_weights():
    tr = _trainer(steps=2)
    pruning = prune.prune_weights(tr.model, 0.5, "magnitude", "layer")
    tr.fit(progress=False)                                                  # masks not re-applied
    assert any((p.data[~pruning.masks[n]] != 0).any() for n, p in pruning.params.items())


def test_iterative_pruning_keeps_earlier_pruned_weights_and_hits_each_sparsity():
    tr = _trainer(steps=1)                                                  # not fitted: stages set the steps
    params = prune.prunable(tr.model)
    n = sum(p.size for p in params.values())
    schedule = prune.cubic_schedule(0.8, 3)
    assert schedule == pytest.approx([0.8 * (1 - (1 - i / 3) ** 3) for i in (1, 2, 3)])
    pruned_before = set()
    rows = []
    for s in schedule:
        rows += prune.iterative_prune(tr, [s], 2, "magnitude", "global")
        now = {(name, i) for name, p in params.items() for i in np.flatnonzero(p.data.reshape(-1) == 0)}
        assert pruned_before <= now
        pruned_before = now
    assert [r["sparsity"] for r in rows] == [round(s * n) / n for s in schedule]
    assert tr.start_step == 6 and all(np.isfinite(r["val_loss"]) for r in rows)


def test_l1_trainer_adds_lambda_times_the_sum_of_absolute_weights():
    tr, l1 = _trainer(), _trainer(cls=prune.L1Trainer, l1=0.01)
    x, y = tr.batch(0, 0)
    plain, reg = tr.compute_loss(x, y, 0, 0), l1.compute_loss(x, y, 0, 0)
    total = sum(np.abs(p.data.astype(np.float64)).sum() for p in prune.prunable(l1.model).values())
    assert float(reg.data) == pytest.approx(float(plain.data) + 0.01 * total, rel=1e-6)
    reg.backward()
    plain.backward()
    for p, q in zip(prune.prunable(l1.model).values(), prune.prunable(tr.model).values()):
        assert np.allclose(p.grad, q.grad + 0.01 * np.sign(p.data), atol=1e-7)


def test_csr_bytes_are_values_indices_and_row_pointers():
    w = np.zeros((4, 5), np.float32)
    w[0, 1], w[2, 3], w[2, 4] = 1, 2, 3
    assert prune.csr_bytes(w) == 3 * 4 + 3 * 4 + 5 * 4


# -- structured ------------------------------------------------------------------------------------
def test_heads_and_channels_are_the_units_tensor_parallelism_splits():
    model = GPT(CFG, seed=0)
    pairs = structured.unit_pairs(model)
    assert [(p.name, p.kind, p.count, p.parts, p.width) for p in pairs[:2]] == [
        ("transformer.h.0.attn", "heads", 4, 3, 4), ("transformer.h.0.mlp", "channels", 64, 1, 1)]
    heads = pairs[0]
    assert heads.columns([1]).tolist() == [4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39]   # its q, k, v
    assert heads.rows([1]).tolist() == [4, 5, 6, 7]


def test_structured_masks_equal_an_independent_norm_ranking():
    model = GPT(CFG, seed=7)
    sd = model.state_dict()
    masks = structured.structured_masks(structured.unit_pairs(model), 0.5)
    for i in range(2):
        wa, wp = sd[f"transformer.h.{i}.attn.c_attn.weight"], sd[f"transformer.h.{i}.attn.c_proj.weight"]
        norms = [np.sqrt(sum(float((wa[:, part * 16 + h * 4: part * 16 + h * 4 + 4].astype(np.float64) ** 2).sum())
                             for part in range(3)) + float((wp[h * 4:(h + 1) * 4].astype(np.float64) ** 2).sum()))
                 for h in range(4)]
        gone = sorted(range(4), key=lambda h: (norms[h], h))[:2]
        assert masks[f"transformer.h.{i}.attn"].tolist() == [h not in gone for h in range(4)]
        wf, wo = sd[f"transformer.h.{i}.mlp.c_fc.weight"], sd[f"transformer.h.{i}.mlp.c_proj.weight"]
        norms = [np.sqrt((wf[:, j].astype(np.float64) ** 2).sum() + (wo[j].astype(np.float64) ** 2).sum())
                 for j in range(64)]
        gone = sorted(range(64), key=lambda j: (norms[j], j))[:32]
        assert masks[f"transformer.h.{i}.mlp"].tolist() == [j not in gone for j in range(64)]


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_compacting_changes_no_output_and_saves_the_formulas_bytes_and_flops(fraction):
    model = GPT(CFG, seed=3).eval()
    x = np.random.default_rng(0).integers(0, 20, (2, 12))
    dense = measure(copy_model(model), x)
    pairs = structured.unit_pairs(model)
    masks = structured.structured_masks(pairs, fraction)
    structured.zero_units(pairs, masks)
    zeroed_logits = model(x)[0].data
    zeroed = measure(model, x)
    structured.compact(pairs, masks)
    assert np.allclose(model(x)[0].data, zeroed_logits, rtol=1e-5, atol=1e-6)
    assert model.transformer.h[0].attn.c_attn.weight.shape == (16, 3 * 16 - round(3 * 16 * fraction))
    assert model.transformer.h[1].mlp.c_proj.weight.shape == (64 - round(64 * fraction), 16)
    small = measure(model, x)
    formula = costs.structured_savings_formula(CFG, 2, 12, fraction)
    assert dense.parameter_bytes - small.parameter_bytes == formula["bytes"]
    assert dense.matmul_flops - small.matmul_flops == formula["matmul_flops"]
    assert (zeroed.parameter_bytes, zeroed.flops) == (dense.parameter_bytes, dense.flops)   # zeros cost the same


def test_unstructured_pruning_saves_no_bytes_and_no_flops_without_sparse_kernels():
    model = GPT(CFG, seed=3)
    x = np.random.default_rng(1).integers(0, 20, (2, 12))
    dense = measure(copy_model(model), x)
    prune.prune_weights(model, 0.9, "magnitude", "global")
    sparse = measure(model, x)
    assert (sparse.parameter_bytes, sparse.flops, sparse.time) == (dense.parameter_bytes, dense.flops, dense.time)
    table = costs.csr_table(GPT(CFG, seed=3), (0.0, 0.5, 0.75))
    linear_bytes = 4 * sum(lin.weight.size for _, _, _, lin in linear_layers(model))
    assert all(d == linear_bytes for d, _ in table.values())
    assert table[0.0][1] > table[0.5][1] > linear_bytes > table[0.75][1]     # CSR pays off only past 50 %


def test_bad_fractions_criteria_and_missing_batches_are_refused_by_name():
    """A negative fraction would slice the ranking from its end (prune the strongest units),
    and an unknown criterion used to fall back on magnitude without a word."""
    model = GPT(CFG, seed=7)
    pairs = structured.unit_pairs(model)
    for bad in (-0.25, 1.5, float("nan")):
        with pytest.raises(ValueError, match=f"structured pruning fraction must be in \\[0, 1\\].*got {bad}"):
            structured.structured_masks(pairs, bad)
    for bad in ("Taylor", "random", ""):
        with pytest.raises(ValueError, match=f"pruning criterion must be one of \\['magnitude', 'taylor'\\], got {bad!r}"):
            prune.prune_weights(copy_model(model), 0.5, bad)
    with pytest.raises(ValueError, match="criterion='taylor' scores .* on data: give batches="):
        prune.prune_weights(copy_model(model), 0.5, "taylor")
    trainer = _trainer(steps=1)
    with pytest.raises(ValueError, match="pruning criterion must be one of"):
        prune.iterative_prune(trainer, [0.5], 1, criterion="l2")
