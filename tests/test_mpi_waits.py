"""MPI waits (minidist.distributed.mpi): a rank spins before it yields only when every rank on
the machine has a core of its own; ranks that share a core yield at once. Under real mpirun."""
import os
import re
import textwrap

import pytest

from _mpi import run_mpi

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(120)]
REPORT = re.compile(r"rank (\d+): spin ([0-9.e+-]+) SPIN_S ([0-9.e+-]+)")

PROGRAM = textwrap.dedent('''
    import os, sys
    if sys.argv[1] == "one-core":          # every rank on the first core of this process's set
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    from minidist import distributed as dist
    from minidist.distributed import mpi

    def main(comm):
        print(f"rank {comm.rank}: spin {mpi._SPIN['s']!r} SPIN_S {mpi.SPIN_S!r}", flush=True)
        return dist.all_reduce(comm, [1.0 * comm.rank])   # waits still end: the ranks meet
    dist.run_main(main, timeout=20)
''')


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux's sched_setaffinity")
def test_ranks_sharing_a_core_yield_at_once_and_a_rank_alone_spins(tmp_path):
    script = tmp_path / "spin.py"
    script.write_text(PROGRAM)
    shared = run_mpi(2, [script, "one-core"], timeout=100)
    assert shared.returncode == 0, shared.stderr
    said = {r: (spin, s) for r, spin, s in REPORT.findall(shared.stdout)}   # lines may interleave: matched
    assert said.keys() == {"0", "1"} and all(float(spin) == 0.0 for spin, _ in said.values()), shared.stdout
    alone = run_mpi(1, [script, "all-cores"], timeout=100)
    assert alone.returncode == 0, alone.stderr
    (_, spin, spin_s), = REPORT.findall(alone.stdout)
    assert float(spin) == float(spin_s) > 0
