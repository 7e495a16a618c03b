"""minidist._malloc: only the commands that own their process tune malloc and the GC."""
import gc
import subprocess
import sys

from minidist import _malloc


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def test_import_minidist_leaves_the_gc_alone_and_the_commands_tune_it():
    default = _fresh("import gc; print(gc.get_threshold())")
    assert _fresh("import gc, minidist, minidist.train, minidist.demo.__main__; print(gc.get_threshold())") == default
    tuned = _fresh("import gc; from minidist._malloc import tune_process; tune_process(); print(gc.get_threshold())")
    assert tuned == str(_malloc.GC_THRESHOLDS) != default


def test_tune_gc_sets_the_thresholds_and_keeps_collecting():
    before = gc.get_threshold()
    try:
        _malloc.tune_gc()
        assert gc.get_threshold() == _malloc.GC_THRESHOLDS and gc.isenabled()
    finally:
        gc.set_threshold(*before)
