"""Forgets the cool-down: the backwards of the warm-up's micro-batches are never run."""
EXPECT = ["is missing", "Is the cool-down there?"]


def schedule_1f1b(p, m):
    programs = []
    for r in range(p):
        w = min(p - r - 1, m)
        prog = [("F", i) for i in range(w)]
        for k in range(m - w):
            prog += [("F", w + k), ("B", k)]
        programs.append(prog)
    return programs
