"""A right solution: weights and optimizer state by parameter name, copied; the rng's state;
the iteration. Must pass."""
import copy

EXPECT = []


def save(trainer):
    params = dict(trainer.model.named_parameters())
    return {
        "weights": {name: p.data.copy() for name, p in params.items()},
        "optimizer": {name: copy.deepcopy(trainer.optimizer.state[id(p)])
                      for name, p in params.items() if id(p) in trainer.optimizer.state},
        "rng": copy.deepcopy(trainer.rng.bit_generator.state),
        "iteration": trainer.iteration,
    }


def restore(trainer, saved):
    for name, p in trainer.model.named_parameters():
        p.data[...] = saved["weights"][name]
        if name in saved["optimizer"]:
            trainer.optimizer.state[id(p)] = copy.deepcopy(saved["optimizer"][name])
    trainer.rng.bit_generator.state = saved["rng"]
    trainer.iteration = saved["iteration"]
