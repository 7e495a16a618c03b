"""One collective call (minidist.distributed.call): the input signature every message carries,
the scope's bookkeeping (nesting, errors, the record), and, under mpirun, a small send that
MPI completes at once returns a completed request."""
import sys
import textwrap

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.distributed import call as C
from minidist.distributed.comm import SENT

from _mpi import run_mpi


pytestmark = [pytest.mark.dist, pytest.mark.timeout(120)]

@pytest.mark.parametrize("x", [np.zeros((3, 4), np.float32), np.arange(5), np.array(2.5), [1.0, 2.0],
                               np.ones((2, 0, 3), np.float16), np.zeros(7, bool), np.ones((1, 2, 3, 4), np.int8)])
def test_input_signature_is_count_dtype_name_shape_and_its_code(x):
    a = np.asarray(x)
    for _ in range(2):                      # first use fills the tables, the second reads them
        assert C._input_signature(x) == (a.size, str(a.dtype), a.shape, C.shape_code(a.shape))


def test_the_shape_code_table_stays_bounded(monkeypatch):
    monkeypatch.setattr(C, "_SHAPE_CODES", {})
    monkeypatch.setattr(C, "_SHAPE_CODES_MAX", 8)
    for n in range(1, 30):
        assert C._input_signature(np.zeros((n, 2)))[3] == C.shape_code((n, 2))
        assert len(C._SHAPE_CODES) <= 8


def test_a_ring_all_reduce_is_one_record_whose_phases_label_its_messages():
    def main(comm):
        dist.all_reduce(comm, np.arange(8.0) + comm.rank)
        return comm.log.collectives, comm.log.entries, comm.call
    for records, entries, current in dist.spawn(main, 4):
        assert current is None
        assert [(r.op, r.algorithm, r.messages) for r in records] == [("all_reduce", "ring", 6)]
        assert {e.op for e in entries} == {"all_reduce"}
        assert [e.phase for e in entries if e.direction == "send"] == ["reduce_scatter"] * 3 + ["all_gather"] * 3


def test_an_error_inside_a_collective_leaves_no_current_call_and_no_record():
    def main(comm):
        with pytest.raises(ZeroDivisionError):
            with comm.collective("all_reduce", "ring", np.ones(3)):
                with comm.collective("reduce_scatter", "ring"):
                    raise ZeroDivisionError("inside")
        return comm.call, len(comm.log.collectives)
    assert dist.spawn(main, 2) == [(None, 0), (None, 0)]


SMALL_SEND = textwrap.dedent('''
    import numpy as np
    from minidist import distributed as dist
    from minidist.distributed.comm import SENT

    def main(comm):
        if comm.rank == 0:
            req = comm.isend(np.arange(16.0), 1, tag=3)
            print("small send completed when posted:", req is SENT, flush=True)
            req.wait()
        else:
            got = comm.recv(0, tag=3)
            assert (got == np.arange(16.0)).all()
        return comm.log.to_records()

    dist.run_main(main, timeout=20)
''')


@pytest.mark.mpi
def test_an_eager_mpi_send_returns_a_completed_request(tmp_path):
    script = tmp_path / "small_send.py"
    script.write_text(SMALL_SEND)
    proc = run_mpi(2, [script], timeout=100)
    assert proc.returncode == 0, proc.stderr
    assert "small send completed when posted: True" in proc.stdout


def test_sent_is_a_completed_request():
    assert SENT.wait() is None and SENT._done


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
