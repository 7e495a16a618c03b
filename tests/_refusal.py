"""What the bad-input tests of parallel layouts share: the error each rank's Trainer raises."""
from minidist import distributed as dist
from minidist.training.config import ConfigError
from minidist.training.trainer import Trainer


def _error_on(comm, cfg):
    try:
        Trainer(cfg, comm)
    except ConfigError as e:
        return str(e)
    return None


def trainer_errors(cfg, world, timeout=20):
    """The ConfigError message each of ``world`` in-process ranks raises building a Trainer for
    ``cfg`` (None on a rank that raised nothing); a hang becomes a timeout."""
    return dist.spawn(_error_on, world, cfg, timeout=timeout)
