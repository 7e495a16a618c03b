"""A right solution: collectives per step and per micro-batch, each r·Ψ. Must pass."""
EXPECT = []


def elements_sent(psi, n, strategy, k=1):
    if n == 1:
        return 0.0
    if strategy == "parameter_server":
        return psi
    r = (n - 1) / n
    per_step = {"ddp": 2, "zero1": 2, "zero2": 1, "zero3": 0}[strategy]
    per_micro = {"ddp": 0, "zero1": 0, "zero2": 1, "zero3": 3}[strategy]
    return r * psi * (per_step + k * per_micro)
