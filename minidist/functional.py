"""``minidist.functional`` (import as ``F``): the ops under ``torch.nn.functional``'s names.

The implementations live in :mod:`minidist.ops`, one file per family.
"""
from .ops import *  # noqa: F401,F403
from .ops import __all__  # noqa: F401
