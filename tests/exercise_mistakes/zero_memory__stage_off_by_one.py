"""Wrong: each part is sharded from one stage later than ZeRO does (stage s shards what
stage s - 1 should)."""
EXPECT = ["stage 1 shards the optimizer_states over the N_d = 64 ranks", "shard every part one stage late"]


def model_state_bytes(psi, n_d, stage, k=12):
    return {"parameters": 2 * psi / (n_d if stage >= 4 else 1),
            "gradients": 2 * psi / (n_d if stage >= 3 else 1),
            "optimizer_states": k * psi / (n_d if stage >= 2 else 1)}
