"""Zeroes the gradients at the start of every micro-batch."""
EXPECT = ["inside the loop"]


def train_step(model, optimizer, x, y, k):
    b = x.shape[0] // k
    total = 0.0
    for i in range(k):
        optimizer.zero_grad()
        _, loss = model(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b])
        (loss * (1.0 / k)).backward()
        total += float(loss.data)
    optimizer.step()
    return total / k
