"""Figure titles name the world the tour ran on, not a typed-in 4: the ZeRO chapter's model
states figure and the checkpointing chapter's overlap timelines, run on 2 in-process ranks."""
import pytest
from _chapter import run_chapter

import minidist.plotting.checkpointing as ckpt_plots
import minidist.plotting.zero as zero_plots
from minidist.demo import checkpointing, zero

pytestmark = [pytest.mark.timeout(180)]


def _capture(monkeypatch, module) -> dict:
    """Replace ``module.save``: record every figure's titles by file name, write nothing."""
    titles = {}

    def save(fig, path, *args, **kwargs):
        titles[path.name] = [ax.get_title() or ax.get_title(loc="left") for ax in fig.axes] + \
                            [fig._suptitle.get_text() if fig._suptitle else ""]
        fig.clf()
        return path
    monkeypatch.setattr(module, "save", save)
    return titles


@pytest.mark.zero
def test_zero_memory_figure_names_the_tours_world(tmp_path, monkeypatch):
    titles = _capture(monkeypatch, zero_plots)
    run_chapter(zero.run, tmp_path, world=2)
    text = " ".join(titles["03_zero_memory.png"])
    assert "2 ranks" in text and "4 ranks" not in text


@pytest.mark.checkpointing
def test_overlap_timelines_name_the_tours_world(tmp_path, monkeypatch):
    titles = _capture(monkeypatch, ckpt_plots)
    run_chapter(checkpointing.run, tmp_path, world=2)
    panels = titles["07_overlap_timelines.png"]
    assert any(t.startswith("DDP on 2 ranks") for t in panels)
    assert any(t.startswith("ZeRO-3 on 2 ranks") for t in panels)
    assert not any("4 ranks" in t for t in panels)
