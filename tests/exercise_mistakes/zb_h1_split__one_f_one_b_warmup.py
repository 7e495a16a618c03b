"""Keeps 1F1B's warm-up (p−r−1 forwards) although the cycle starts with B: every rank waits."""
EXPECT = ["deadlock", "Your warm-up is 1F1B's, p−r−1 forwards"]


def schedule_zb_h1(p, m):
    programs = []
    for r in range(p):
        warm = min(p - r - 1, m)
        prog = [("F", i) for i in range(warm)]
        done = 0
        for k in range(m):
            prog.append(("B", k))
            if k >= r:
                prog.append(("W", done))
                done += 1
            if warm + k < m:
                prog.append(("F", warm + k))
        programs.append(prog + [("W", i) for i in range(done, m)])
    return programs
