"""``dist.gather_object``: plain data from every rank to a root, over send/recv; and the
train CLI's ``--trace``, which uses it to write one Perfetto trace of every rank."""
import json

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.distributed.objects import encode
from minidist.train import main

pytestmark = pytest.mark.dist


def _gather(comm, root):
    obj = {"rank": comm.rank, "values": np.arange(comm.rank + 1), "name": "r" * (3 * comm.rank)}
    mark = comm.log.mark()
    out = dist.gather_object(comm, obj, root=root)
    return out, comm.log.since(mark).bytes_sent()


@pytest.mark.parametrize("root", [0, 2])
def test_gather_object_collects_every_rank_in_order(root):
    results = dist.spawn(_gather, 3, root)
    for rank, (out, sent) in enumerate(results):
        if rank != root:
            assert out is None
            # one message: the JSON bytes of this rank's object
            expected = json.dumps({"rank": rank, "values": list(range(rank + 1)), "name": "r" * (3 * rank)})
            assert sent == len(expected.encode())
        else:
            assert sent == 0
            assert [o["rank"] for o in out] == [0, 1, 2]
            assert [list(o["values"]) for o in out] == [[0], [0, 1], [0, 1, 2]]
            assert [o["name"] for o in out] == ["", "rrr", "rrrrrr"]


def test_gather_object_errors():
    with pytest.raises(ValueError, match="root 5"):
        dist.spawn(lambda comm: dist.gather_object(comm, 1, root=5), 2)
    with pytest.raises(TypeError, match="plain data"):
        encode(object())
    assert dist.gather_object(None, {"a": 1}) == [{"a": 1}]


def test_train_cli_trace_holds_every_rank(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 8},
                               "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "steps": 2,
                               "train_micro_batch_size_per_gpu": 2, "eval_iters": 1,
                               "zero_optimization": {"stage": 2}}))
    trace = tmp_path / "trace.json"
    assert main(["--config", str(cfg), "--world-size", "3", "--trace", str(trace), "--quiet"]) == 0
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M"}
    assert names == {"rank 0", "rank 1", "rank 2"}
    for rank in range(3):
        mine = [e for e in events if e["pid"] == rank and e["ph"] == "X"]
        assert {"compute", "comm"} <= {e["tid"] for e in mine}
        assert any("reduce_scatter" in e["name"] for e in mine if e["tid"] == "comm")
