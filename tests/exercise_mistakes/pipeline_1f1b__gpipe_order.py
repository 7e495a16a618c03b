"""All forwards, then all backwards: GPipe. Same bubble, but every rank holds all m micro-batches."""
EXPECT = ["GPipe's order", "1F1B holds min(p−r, m)"]


def schedule_1f1b(p, m):
    return [[("F", i) for i in range(m)] + [("B", i) for i in range(m)] for _ in range(p)]
