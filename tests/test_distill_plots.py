"""The distillation figures' bars start at zero, so their heights compare (KD 1.57 is twice
KD + PKD 0.78, not five times)."""
import pytest

import minidist.plotting.distill as plots

pytestmark = [pytest.mark.distill, pytest.mark.timeout(60)]


def test_patient_kd_bars_start_at_zero(tmp_path, monkeypatch):
    figs = []

    def save(fig, path, *args, **kwargs):
        figs.append(fig)
        return path
    monkeypatch.setattr(plots, "save", save)
    plots.plot_sweeps({1.0: 1.7, 2.0: 1.6, 4.0: 1.65}, {"KD": 1.568, "PKD-Skip": 0.9, "PKD-Last": 0.782}, 1.8,
                      tmp_path / "sweeps.png")
    (fig,) = figs
    right = fig.axes[1]
    assert right.get_title().startswith("KD vs Patient KD")
    assert right.get_ylim()[0] == 0
    heights = {p.get_height() for p in right.patches}
    assert all(p.get_y() == 0 for p in right.patches) and max(heights) < right.get_ylim()[1]
    assert right.get_xlabel() and right.get_ylabel() and right.get_legend() is not None
