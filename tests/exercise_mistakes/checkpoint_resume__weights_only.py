"""Wrong: only the weights are saved, the most common checkpoint of a first training script:
Adam's moments and step count, the data order and the schedule all start over."""
EXPECT = ["the optimizer has no state for parameter", "by NAME"]


def save(trainer):
    return {name: p.data.copy() for name, p in trainer.model.named_parameters()}


def restore(trainer, saved):
    for name, p in trainer.model.named_parameters():
        p.data[...] = saved[name]
