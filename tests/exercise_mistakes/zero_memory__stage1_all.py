"""Stage 1 divides everything by N_d."""
EXPECT = ["stage 1 keeps the parameters whole"]


def model_state_bytes(psi, n_d, stage, k=12):
    n = n_d if stage >= 1 else 1
    return {"parameters": 2 * psi / n, "gradients": 2 * psi / n, "optimizer_states": k * psi / n}
