"""Splits the backward but runs each W right after its B: the drain keeps its idle time."""
EXPECT = ["W right after its B", "Hold rank r's W back r cycles"]


def schedule_zb_h1(p, m):
    programs = []
    for r in range(p):
        warm = min(p - r, m)
        prog = [("F", i) for i in range(warm)]
        for k in range(m):
            prog += [("B", k), ("W", k)]
            if warm + k < m:
                prog.append(("F", warm + k))
        programs.append(prog)
    return programs
