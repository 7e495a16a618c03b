"""The demo chapter 'tensor' on 4 in-process ranks: its table is measured and equals the formulas,
its figures are written."""
import pytest

from minidist import distributed as dist
from minidist.demo import tensor_parallel as chapter
from minidist.parallel.tensor import accounting

pytestmark = [pytest.mark.tensor, pytest.mark.timeout(120)]


def test_tensor_chapter_measures_what_the_formulas_say(tmp_path, capsys):
    res = dist.spawn(chapter.run, 4, tmp_path)[0]
    labels = [r["label"] for r in res["rows"]]
    assert labels == ["none", "TP 2", "TP 2 + SP", "TP 4", "TP 4 + SP"]
    for r in res["rows"]:
        assert r["measured"] == r["formula"]
        if r["label"] != "none":
            assert r["max_rel_diff"] <= 1e-9 and r["tp_bytes"] == r["tp_bytes_formula"]
    measured = [r["measured"] for r in res["rows"]]
    assert measured[2] < measured[1] and measured[4] < measured[3] < measured[1] < measured[0]
    # per layer (2-layer run minus 1-layer run): TP's 4 all-reduces of b·s·h; SP's all-gathers and
    # reduce-scatters of the same bytes, plus the re-gather for dW and the replicated grads
    bsh, W = chapter.B * chapter.S * chapter.H, chapter.W
    for t in (2, 4):
        ring = (t - 1) * bsh // t * W
        assert res["layers"][f"TP {t}"] == {"all_reduce": 4 * 2 * ring}
        sp = res["layers"][f"TP {t} + SP"]
        assert sp["reduce_scatter"] == 4 * ring and sp["all_gather"] == 6 * ring
        assert sp["all_reduce"] == 6 * accounting.collective_bytes("all_reduce", chapter.H, t, W)
    for name in ("05_weight_shards.png", "05_activation_bytes.png", "05_layer_collectives.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert "TP 4 + SP" in capsys.readouterr().out


def test_ownership_picture_is_the_sharding_itself():
    own = chapter.ownership(2, n_embd=8, vocab=11)
    c_attn = own["attn.c_attn [q | k | v]"]                   # (8, 24): q, k, v thirds, heads split in half
    assert (c_attn[:, 0:4] == 0).all() and (c_attn[:, 4:8] == 1).all() and (c_attn[:, 8:12] == 0).all()
    assert (own["attn.c_proj"][:4] == 0).all() and (own["attn.c_proj"][4:] == 1).all()
    wte = own["wte (transposed)"]                               # 11 entries padded to 12: one padding column
    assert wte.shape == (8, 12) and (wte[:, 11] == -2).all() and (wte[:, :6] == 0).all()
