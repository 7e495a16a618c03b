"""A correct student solution: must pass."""
EXPECT = []


def train_step(model, optimizer, x, y, k):
    b = x.shape[0] // k
    optimizer.zero_grad()
    total = 0.0
    for i in range(k):
        _, loss = model(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b])
        (loss * (1.0 / k)).backward()
        total += float(loss.data)
    optimizer.step()
    return total / k
