"""What the distillation tests share."""
from minidist import distributed as dist
from minidist.distill.runner import distill_rank
from minidist.training.config import ConfigError


def errors_on_every_rank(cfg, world):
    """``(key, message)`` of the ConfigError each of ``world`` in-process ranks raises for ``cfg``
    (None on a rank that raised nothing); a hang becomes a timeout."""
    def attempt(comm):
        try:
            distill_rank(comm, cfg)
        except ConfigError as e:
            return e.key, str(e)
        return None
    return dist.spawn(attempt, world, timeout=10)
