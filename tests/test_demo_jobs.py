"""minidist.demo.jobs: a chapter's independent runs give the same results in worker processes
as in place, in the order of the calls, on every rank of an in-process world."""
import os

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.demo import jobs
from minidist.demo.mixed_precision import train

pytestmark = [pytest.mark.timeout(180)]


def test_in_place_outside_the_context():
    assert jobs.run_jobs([(divmod, 7, 2), (pow, 2, 5)]) == [(3, 1), 32]
    assert jobs.run_jobs([]) == []


def test_worker_processes_give_the_runs_of_every_rank_unchanged():
    here = [train(None, 3, None), train("bf16", 3, None)]

    def rank(comm):
        calls = [(train, None, 3, None), (train, "bf16", 3, None)] if comm.rank == 1 else [(os.getpid,)]
        return jobs.run_jobs(calls)
    with jobs.job_processes(workers=2):
        out = dist.spawn(rank, 3)
    assert all(pid != os.getpid() for r in (0, 2) for pid in out[r])        # they ran in other processes
    for got, want in zip(out[1], here):
        assert np.array_equal(got["losses"], want["losses"])                # bit for bit, in call order
