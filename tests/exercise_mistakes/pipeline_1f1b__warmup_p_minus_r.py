"""Warms up with p−r forwards instead of p−r−1: still runs, but holds one micro-batch too many."""
EXPECT = ["one forward too many on every rank: p−r+1 instead of p−r", "1F1B holds min(p−r, m)"]


def schedule_1f1b(p, m):
    programs = []
    for r in range(p):
        w = min(p - r, m)
        prog = [("F", i) for i in range(w)]
        for k in range(m - w):
            prog += [("F", w + k), ("B", k)]
        prog += [("B", i) for i in range(m - w, m)]
        programs.append(prog)
    return programs
