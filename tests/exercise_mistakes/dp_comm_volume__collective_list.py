"""A right solution written another way: the list of collectives a step runs, each with its
volume factor, summed. Must pass."""
EXPECT = []

FACTOR = {"all_reduce": 2, "reduce_scatter": 1, "all_gather": 1}


def steps(strategy, k):
    if strategy == "ddp":
        return ["all_reduce"]
    if strategy == "zero1":
        return ["reduce_scatter", "all_gather"]
    if strategy == "zero2":
        return ["reduce_scatter"] * k + ["all_gather"]
    return ["all_gather", "all_gather", "reduce_scatter"] * k


def elements_sent(psi, n, strategy, k=1):
    if strategy == "parameter_server":
        return psi if n > 1 else 0
    return sum(FACTOR[c] for c in steps(strategy, k)) * psi * (n - 1) / n
