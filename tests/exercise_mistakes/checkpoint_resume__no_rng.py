"""Wrong: everything but the data sampler's rng: the resumed run sees other batches."""
import copy

EXPECT = ["the data sampler's rng is not where it was", "starts over"]


def save(trainer):
    params = dict(trainer.model.named_parameters())
    return {"weights": {n: p.data.copy() for n, p in params.items()},
            "optimizer": {n: copy.deepcopy(trainer.optimizer.state[id(p)]) for n, p in params.items()},
            "iteration": trainer.iteration}


def restore(trainer, saved):
    for name, p in trainer.model.named_parameters():
        p.data[...] = saved["weights"][name]
        trainer.optimizer.state[id(p)] = copy.deepcopy(saved["optimizer"][name])
    trainer.iteration = saved["iteration"]
