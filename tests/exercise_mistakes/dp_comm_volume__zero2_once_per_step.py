"""Wrong: gradient accumulation ignored: every strategy communicates once per step, as if
ZeRO-2 and ZeRO-3 could accumulate a full gradient."""
EXPECT = ["ZeRO-2 reduce-scatters after every micro-batch"]


def elements_sent(psi, n, strategy, k=1):
    if n == 1:
        return 0.0
    if strategy == "parameter_server":
        return psi
    return (n - 1) / n * psi * {"ddp": 2, "zero1": 2, "zero2": 2, "zero3": 3}[strategy]
