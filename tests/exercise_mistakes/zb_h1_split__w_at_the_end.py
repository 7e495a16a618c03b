"""Defers every W to the end of the step: every micro-batch's activations stay alive."""
EXPECT = ["every W waits for the end", "at most min(p, m)"]


def schedule_zb_h1(p, m):
    programs = []
    for r in range(p):
        warm = min(p - r, m)
        prog = [("F", i) for i in range(warm)]
        for k in range(m):
            prog.append(("B", k))
            if warm + k < m:
                prog.append(("F", warm + k))
        programs.append(prog + [("W", i) for i in range(m)])
    return programs
