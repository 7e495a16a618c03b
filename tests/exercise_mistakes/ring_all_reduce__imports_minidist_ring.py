"""Wrong: calls minidist's own ring under another name: the rules of the exercise refuse it."""
from minidist.distributed import all_reduce as ring

EXPECT = ["`minidist.distributed.all_reduce`", "Not allowed"]


def ring_all_reduce(comm, x):
    return ring(comm, x, algorithm="ring")
