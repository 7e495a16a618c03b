"""Wrong: ZeRO-3 gathers the parameters once per micro-batch (forgets the backward's gather)."""
EXPECT = ["twice per micro-batch"]


def elements_sent(psi, n, strategy, k=1):
    if n == 1:
        return 0.0
    if strategy == "parameter_server":
        return psi
    per_step = {"ddp": 2, "zero1": 2, "zero2": 1, "zero3": 0}[strategy]
    per_micro = {"ddp": 0, "zero1": 0, "zero2": 1, "zero3": 2}[strategy]
    return (n - 1) / n * psi * (per_step + k * per_micro)
