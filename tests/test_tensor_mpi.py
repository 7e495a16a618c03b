"""Tensor + sequence parallelism under ``mpirun -n 4`` (TP 2 × DP 2): the same weights as one
rank (float64, relative ≤ 1e-9) and as the in-process backend, the same TP messages; the
train CLI reports every rank's grid coordinates; bad input fails on every rank."""
import copy
import json

import numpy as np
import pytest
from _mpi import run_mpi

from minidist import distributed as dist
from minidist.parallel.grid import GridShape
from minidist.testing import train_steps

pytestmark = [pytest.mark.tensor, pytest.mark.mpi, pytest.mark.timeout(120)]

CFG = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 4, "block_size": 8, "dropout": 0.1},
       "data": {"dataset": "english", "seq_len": 8}, "steps": 2, "dtype": "float64",
       "train_micro_batch_size_per_gpu": 2, "eval_iters": 1,
       "parallel": {"tensor": 2, "sequence_parallel": True}, "zero_optimization": {"stage": 1}}

SCRIPT = """
import json, sys
import numpy as np
from minidist import distributed as dist
from minidist.testing import train_steps

cfg, out = json.loads(sys.argv[1]), sys.argv[2]

def main(comm):
    r = train_steps(comm, cfg)
    tr = r["trainer"]
    tp = [[c.op, c.bytes_sent] for c in tr.comm.log.collectives if c.group == tr.grid.tp.group]
    arrays = {f"{s}|{k}": v for s, p in enumerate(r["params"]) for k, v in p.items()}
    np.savez(f"{out}/rank{comm.rank}.npz", losses=[h["loss"] for h in r["history"]], **arrays)
    with open(f"{out}/rank{comm.rank}.json", "w") as f:
        json.dump({"tp": tp, "coords": tr.grid.coords}, f)

dist.run_main(main)
"""


def test_tp_sp_under_mpirun_equals_one_rank_and_in_process(tmp_path):
    script = tmp_path / "tp_mpi.py"
    script.write_text(SCRIPT)
    p = run_mpi(4, [script, json.dumps(CFG), tmp_path], timeout=100)
    assert p.returncode == 0, p.stderr
    ref = train_steps({**copy.deepcopy(CFG), "parallel": {}, "train_micro_batch_size_per_gpu": 4})
    inproc = dist.spawn(train_steps, 4, copy.deepcopy(CFG))
    shape = GridShape(4, 2)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(4)]
    for step in range(CFG["steps"]):
        mpi = [{k.split("|", 1)[1]: z[k] for k in z.files if k.startswith(f"{step}|")} for z in ranks]
        for r in range(4):                                     # the MPI backend computes what threads compute
            assert all(np.array_equal(mpi[r][k], inproc[r]["params"][step][k]) for k in mpi[r])
        for full in mpi:                                       # every rank: the one-rank model (train_steps gathers)
            assert full.keys() == ref["params"][step].keys()
            assert max(float(np.max(np.abs(full[k] - ref["params"][step][k]) / np.max(np.abs(ref["params"][step][k]))))
                       for k in full) <= 1e-9
    for r in range(4):
        info = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert info["coords"] == shape.coords(r)
        tr = inproc[r]["trainer"]
        assert info["tp"] == [[c.op, c.bytes_sent] for c in tr.comm.log.collectives if c.group == tr.grid.tp.group]


def test_train_cli_reports_coords_and_bad_tp_fails_on_every_rank(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**CFG, "steps": 1, "dtype": "float32"}))
    report = tmp_path / "report.json"
    p = run_mpi(4, ["-m", "minidist.train", "--config", cfg, "--report", report, "--quiet"], timeout=100)
    assert p.returncode == 0, p.stderr
    assert "tensor parallel: t = 2, sequence parallel on" in p.stdout
    rep = json.loads(report.read_text())
    assert [r["coords"] for r in rep["ranks"]] == [GridShape(4, 2).coords(r) for r in range(4)]
    for r in rep["ranks"]:
        tp = r["tensor_parallel"]
        assert tp["bytes_sent_per_step"] == tp["bytes_sent_per_step_expected"] > 0
    cfg.write_text(json.dumps({**CFG, "parallel": {"tensor": 4}}))
    bad = run_mpi(2, ["-m", "minidist.train", "--config", cfg, "--quiet"], timeout=60)
    assert bad.returncode != 0
    # every rank finds the error before any message and exits; one of them says it (not two copies)
    assert bad.stderr.count("parallel.tensor") == 1 and "greater than the world size 2" in bad.stderr
