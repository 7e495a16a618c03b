"""A correct student solution: must pass."""
EXPECT = []


def model_state_bytes(psi, n_d, stage, k=12):
    params = 2 * psi / (n_d if stage >= 3 else 1)
    grads = 2 * psi / (n_d if stage >= 2 else 1)
    opt = k * psi / (n_d if stage >= 1 else 1)
    return {"parameters": params, "gradients": grads, "optimizer_states": opt}
