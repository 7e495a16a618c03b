"""Forgets to divide each micro-batch's loss by k."""
EXPECT = ["k times"]


def train_step(model, optimizer, x, y, k):
    b = x.shape[0] // k
    total = 0.0
    for i in range(k):
        _, loss = model(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b])
        loss.backward()
        total += float(loss.data)
    optimizer.step()
    optimizer.zero_grad()
    return total / k
