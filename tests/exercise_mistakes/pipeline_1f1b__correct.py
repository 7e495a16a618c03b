"""A correct student solution, written another way: each rank runs a backward as soon as it
holds p−r micro-batches (or has no forward left), else the next forward. Must pass."""
EXPECT = []


def schedule_1f1b(p, m):
    programs = []
    for r in range(p):
        prog, next_f, next_b = [], 0, 0
        while next_b < m:
            in_flight = next_f - next_b
            if next_f < m and in_flight < p - r:
                prog.append(("F", next_f))
                next_f += 1
            else:
                prog.append(("B", next_b))
                next_b += 1
        programs.append(prog)
    return programs
