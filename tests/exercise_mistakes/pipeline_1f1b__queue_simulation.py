"""A right solution written another way: each rank's program built with a queue of the
micro-batches whose activations it holds, pushing forwards while fewer than min(p - r, m) are
held, then alternating backward of the oldest and forward of the next. Must pass."""
from collections import deque

EXPECT = []


def schedule_1f1b(p, m):
    programs = []
    for r in range(p):
        limit = min(p - r, m)
        held, nxt, prog = deque(), 0, []
        while nxt < m or held:
            if nxt < m and len(held) < limit:
                prog.append(("F", nxt))
                held.append(nxt)
                nxt += 1
            else:
                prog.append(("B", held.popleft()))
        programs.append(prog)
    return programs
