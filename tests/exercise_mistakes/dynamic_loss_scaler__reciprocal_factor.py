"""A right scaler written another way: it backs off by multiplying with 1/scale_factor, which
rounds differently from dividing when the factor is 1.5 or 3 (the held-out factors): must pass."""

EXPECT = []


class LossScaler:
    def __init__(self, init_scale, scale_factor=2.0, scale_window=1000, min_scale=1.0, delayed_shift=1):
        self.loss_scale = init_scale
        self.inverse = 1.0 / scale_factor
        self.factor, self.window, self.min_scale, self.delay = scale_factor, scale_window, min_scale, delayed_shift
        self.iteration, self.last_overflow, self.hysteresis = 0, -1, delayed_shift

    def update_scale(self, overflow):
        if overflow:
            if self.delay == 1 or self.hysteresis <= 1:
                self.loss_scale = max(self.loss_scale * self.inverse, self.min_scale)
            else:
                self.hysteresis -= 1
            self.last_overflow = self.iteration
        elif (self.iteration - self.last_overflow) % self.window == 0:
            self.loss_scale = self.loss_scale * self.factor
            self.hysteresis = self.delay
        self.iteration += 1
