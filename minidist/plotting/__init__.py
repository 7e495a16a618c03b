"""Figures. Only this package imports matplotlib (with the Agg backend).

Every figure is drawn by one function of a chapter's module (``memory``, ``collectives``,
``zero``, ``precision``, ``tensor``, ``pipeline``, ``checkpointing``, ``distill``, ``grid``) and written by :func:`save`.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")                      # files only: no display on a cluster or in CI

import matplotlib.pyplot as plt  # noqa: E402

DPI = 110


def save(fig, path, rect=None, dpi: int = DPI):
    """Lay out ``fig`` (inside ``rect`` when a suptitle or a footnote needs room), write it to
    ``path`` and free it; returns ``path``."""
    fig.tight_layout(**({"rect": rect} if rect is not None else {}))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
