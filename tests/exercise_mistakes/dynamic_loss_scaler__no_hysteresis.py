"""Halves on every overflow: ignores delayed_shift."""
EXPECT = ["delayed_shift", "spend hysteresis"]


class LossScaler:
    def __init__(self, init_scale, scale_factor=2.0, scale_window=1000, min_scale=1.0, delayed_shift=1):
        self.loss_scale = init_scale
        self.factor, self.window, self.min_scale = scale_factor, scale_window, min_scale
        self.cur_iter, self.last_overflow_iter = 0, -1

    def update_scale(self, overflow):
        if overflow:
            self.loss_scale = max(self.loss_scale / self.factor, self.min_scale)
            self.last_overflow_iter = self.cur_iter
        elif (self.cur_iter - self.last_overflow_iter) % self.window == 0:
            self.loss_scale *= self.factor
        self.cur_iter += 1
