"""What the checkpoint tests share: train a config with save/load, and compare two checkpoints."""
import numpy as np

from minidist import distributed as dist
from minidist.checkpoint import read_checkpoint
from minidist.train import run


def train(cfg, world, save=None, interval=0, load=None):
    """Trainers of every rank after a run (in-process ranks)."""
    loaded = read_checkpoint(load) if load else None
    if world == 1:
        return [run(cfg, None, False, save, interval, loaded)[0]]
    return dist.spawn(lambda comm: run(cfg, comm, False, save, interval, loaded)[0], world)


def assert_same_state(a, b, atol=0.0):
    """Two checkpoints hold the same parameters, masters, moments and step counts (bit for bit,
    or within ``atol``)."""
    ua, ub = read_checkpoint(a).universal, read_checkpoint(b).universal
    assert ua.keys() == ub.keys()
    for name in ua:
        assert ua[name].keys() == ub[name].keys(), name
        for kind, x in ua[name].items():
            y = ub[name][kind]
            if atol == 0.0:
                assert np.array_equal(x, y), f"{kind} of {name} differs"
            else:
                np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=f"{kind} of {name}")
