"""Wrong: the optimizer state is saved as Adam's exp_avg and exp_avg_sq only: the step count
is lost (bias correction starts over), and SGD's momentum buffer is never saved."""
EXPECT = ["the step count is 0, it was 3"]


def save(trainer):
    params = dict(trainer.model.named_parameters())
    return {"weights": {n: p.data.copy() for n, p in params.items()},
            "m": {n: trainer.optimizer.state[id(p)]["exp_avg"].copy() for n, p in params.items()},
            "v": {n: trainer.optimizer.state[id(p)]["exp_avg_sq"].copy() for n, p in params.items()},
            "rng": dict(trainer.rng.bit_generator.state), "iteration": trainer.iteration}


def restore(trainer, saved):
    for name, p in trainer.model.named_parameters():
        p.data[...] = saved["weights"][name]
        st = trainer.optimizer.state_for(p)
        st["exp_avg"][...] = saved["m"][name]
        st["exp_avg_sq"][...] = saved["v"][name]
    trainer.rng.bit_generator.state = saved["rng"]
    trainer.iteration = saved["iteration"]
