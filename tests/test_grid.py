"""The process grid: Megatron's rank order, and every group derived by comm.split."""
import pytest

from minidist import distributed as dist
from minidist.parallel.grid import GridShape, ProcessGrid

pytestmark = pytest.mark.dist


@pytest.mark.parametrize("world,tp,pp", [(8, 2, 2), (4, 2, 1), (4, 1, 4), (6, 3, 1), (12, 2, 3), (1, 1, 1)])
def test_grid_groups_follow_megatron_rank_order(world, tp, pp):
    def fn(comm):
        g = ProcessGrid(comm, tp=tp, pp=pp)
        return g.coords, g.tp.group, g.dp.group, g.pp.group, g.mp.group, (g.tp.rank, g.dp.rank, g.pp.rank)

    out = dist.spawn(fn, world)
    dp = world // (tp * pp)
    for rank, (coords, tp_g, dp_g, pp_g, mp_g, local) in enumerate(out):
        # rank = tp_rank + tp·(dp_rank + dp·pp_rank), written out independently of GridShape
        t, d, p = rank % tp, (rank // tp) % dp, rank // (tp * dp)
        assert coords == {"dp": d, "pp": p, "tp": t}
        assert tp_g == tuple(x + tp * (d + dp * p) for x in range(tp))
        assert dp_g == tuple(t + tp * (x + dp * p) for x in range(dp))
        assert pp_g == tuple(t + tp * (d + dp * x) for x in range(pp))
        assert mp_g == tuple(sorted(x + tp * (d + dp * y) for x in range(tp) for y in range(pp)))
        assert local == (t, d, p)


def test_grid_shape_rejects_an_indivisible_world_naming_the_keys():
    with pytest.raises(ValueError, match=r"world size 6 is not divisible by tensor × pipeline = 2 × 2.*parallel.tensor"):
        GridShape(6, tp=2, pp=2)
    assert GridShape(8, 2, 2).rank_of(dp=1, pp=1, tp=1) == 7
    assert "pp 1: dp 0 [4 5]  dp 1 [6 7]" in GridShape(8, 2, 2).table()
