"""The collectives chapter of the demo and its figures (in-process, 4 ranks)."""
import numpy as np
import pytest

from minidist import distributed as dist
from minidist.distributed import cost
from minidist.distributed.all_reduce import ring_states

pytestmark = [pytest.mark.dist, pytest.mark.timeout(180)]


def test_collectives_chapter_measures_what_the_textbook_says(tmp_path, capsys):
    from minidist.demo import collectives as chapter

    assert chapter.TITLE == "Collectives"
    results = dist.spawn(chapter.run, 4, tmp_path)
    summary = results[0]
    assert all(r == {} for r in results[1:])                       # only rank 0 reports
    for label, row in summary["bytes_per_rank"].items():
        assert row["measured"] == row["textbook"], label
    # latency-bound small messages: recursive doubling wins; bandwidth-bound large ones: ring
    rows = {(r["algorithm"], r["nbytes"]): r["seconds"] for r in summary["size_rows"]}
    assert rows["recursive_doubling", 1024] < rows["ring", 1024]
    assert rows["ring", 1 << 26] < rows["recursive_doubling", 1 << 26]
    model = cost.crossover("all_reduce", "recursive_doubling", "ring", 4)
    assert summary["crossover_bytes_model"] == pytest.approx(model)
    assert model / 4 <= summary["crossover_bytes_measured"] <= model * 4     # sizes are powers of 4
    assert summary["ring_model_max_rel_error"] < 1e-9
    assert {r["p"] for r in summary["world_rows"]} == {2, 3, 4}
    printed = capsys.readouterr().out
    assert "2(p-1)/p·n" in printed and "crossover" in printed
    pngs = sorted(p.name for p in tmp_path.glob("collectives_*.png"))
    assert pngs == ["collectives_algorithms.png", "collectives_bytes.png", "collectives_operators.png",
                    "collectives_ring_allreduce_steps.png", "collectives_ring_timeline.png"]
    assert all((tmp_path / n).stat().st_size > 10_000 for n in pngs)


def test_ring_states_agree_with_a_real_run():
    # after reduce-scatter step p-1, rank r holds the full sum of chunk r; at the end, everything
    p = 5
    frames = ring_states(p)
    assert len(frames) == 1 + 2 * (p - 1)
    after_rs = frames[p - 1][1]
    assert all(after_rs[r][r] == frozenset(range(p)) for r in range(p))
    assert all(c == frozenset(range(p)) for row in frames[-1][1] for c in row)

    def main(comm):          # one-hot inputs: rank r contributes 2**r, so a sum names its ranks
        x = np.full((p, 3), 2.0 ** comm.rank)
        return dist.reduce_scatter(comm, x)

    for r, chunk in enumerate(dist.spawn(main, p)):
        assert set(np.unique(chunk)) == {float(sum(2 ** q for q in after_rs[r][r]))}
