"""A correct student solution, written another way: 1F1B's program with every backward split,
then each rank's W passes moved r cycles later (the last r W passes to the end). Must pass."""
EXPECT = []


def schedule_zb_h1(p, m):
    programs = []
    for r in range(p):
        warm = min(p - r, m)
        prog = [("F", i) for i in range(warm)]
        held = []
        for k in range(m):
            prog.append(("B", k))
            held.append(("W", k))
            if len(held) > r:
                prog.append(held.pop(0))
            if warm + k < m:
                prog.append(("F", warm + k))
        programs.append(prog + held)
    return programs
