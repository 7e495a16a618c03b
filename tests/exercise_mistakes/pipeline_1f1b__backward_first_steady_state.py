"""Wrong: the warm-up has the statement's p−r−1 forwards, but each steady-state cycle runs the
backward before the forward: the last stage waits for a forward it never ran. The message
must not blame the warm-up, and must say which pass each rank waits for, in words."""

EXPECT = ["Your warm-ups are the statement's min(p−r−1, m) forwards", "starts with a backward",
          "waits to run the backward of micro-batch 0 on stage 1"]


def schedule_1f1b(p, m):
    out = []
    for r in range(p):
        w = min(p - r - 1, m)
        prog = [("F", i) for i in range(w)]
        for k in range(m - w):
            prog += [("B", k), ("F", w + k)]
        prog += [("B", i) for i in range(m - w, m)]
        out.append(prog)
    return out
