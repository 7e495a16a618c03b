"""A right solution written another way: zero_grad before the loop, np.array_split of the batch,
each loss divided by k before backward, the batch loss as the mean of a list. Must pass."""
import numpy as np

EXPECT = []


def train_step(model, optimizer, x, y, k):
    optimizer.zero_grad()
    losses = []
    for xm, ym in zip(np.array_split(x, k), np.array_split(y, k)):
        _, loss = model(xm, ym)
        (loss / k).backward()
        losses.append(float(loss.data))
    optimizer.step()
    return float(np.mean(losses))
