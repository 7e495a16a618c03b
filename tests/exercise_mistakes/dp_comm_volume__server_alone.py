"""A parameter server of one rank still sends its Ψ: with n = 1 there is no other rank to send to."""
EXPECT = ["n = 1"]


def elements_sent(psi, n, strategy, k=1):
    if strategy == "parameter_server":
        return psi
    if n == 1:
        return 0
    r = (n - 1) / n * psi
    return {"ddp": 2 * r, "zero1": 2 * r, "zero2": (k + 1) * r, "zero3": 3 * k * r}[strategy]
