"""Wrong: save keeps references to the live arrays (no copies), so by the time of the restore
they hold the weights and moments of later steps."""
EXPECT = ["weights 2 steps LATER", "save copies (p.data.copy())"]


def save(trainer):
    params = dict(trainer.model.named_parameters())
    return {"weights": {n: p.data for n, p in params.items()},
            "optimizer": {n: trainer.optimizer.state[id(p)] for n, p in params.items()},
            "rng": trainer.rng.bit_generator.state, "iteration": trainer.iteration}


def restore(trainer, saved):
    for name, p in trainer.model.named_parameters():
        p.data[...] = saved["weights"][name]
        trainer.optimizer.state[id(p)] = saved["optimizer"][name]
    trainer.rng.bit_generator.state = saved["rng"]
    trainer.iteration = saved["iteration"]
