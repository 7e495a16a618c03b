"""A right solution written another way: the statement's three phases with explicit counters
(next forward, next W) instead of a list of held-back passes. Must pass."""
EXPECT = []


def schedule_zb_h1(p, m):
    out = []
    for r in range(p):
        warm = min(p - r, m)
        prog = [("F", i) for i in range(warm)]
        next_f, next_w = warm, 0
        for k in range(m):
            prog.append(("B", k))
            if k >= r:
                prog.append(("W", next_w))
                next_w += 1
            if next_f < m:
                prog.append(("F", next_f))
                next_f += 1
        prog += [("W", i) for i in range(next_w, m)]
        out.append(prog)
    return out
