"""Wrong: range(k - 1), the off-by-one that leaves out the last micro-batch."""

EXPECT = ["k - 1 micro-batches", "last micro-batch"]


def train_step(model, optimizer, x, y, k):
    b = x.shape[0] // k
    total = 0.0
    for i in range(k - 1):
        _, loss = model(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b])
        (loss * (1.0 / k)).backward()
        total += float(loss.data) / k
    optimizer.step()
    optimizer.zero_grad()
    return total
