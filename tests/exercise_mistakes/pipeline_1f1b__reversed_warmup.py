"""Counts the warm-up from the wrong end (r forwards on rank r): the last rank fills up while
rank 0 waits for a backward that cannot come."""
EXPECT = ["deadlock", "rank 0 waits to run the backward of micro-batch 0 on stage 0", "reversed. 1F1B runs min(p−r, m)"]


def schedule_1f1b(p, m):
    programs = []
    for r in range(p):
        w = min(r, m)
        prog = [("F", i) for i in range(w)]
        for k in range(m - w):
            prog += [("F", w + k), ("B", k)]
        prog += [("B", i) for i in range(m - w, m)]
        programs.append(prog)
    return programs
