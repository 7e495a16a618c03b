"""``python -m minidist.estimate``: see :mod:`minidist.estimate.cli`."""
from .cli import main

raise SystemExit(main())
