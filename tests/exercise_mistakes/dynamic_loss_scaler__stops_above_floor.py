"""Wrong: a back-off that would go below min_scale is skipped, so a scale that is no power of
the factor stops above the floor (3 with min_scale 2) instead of landing on it. Every fixed
case starts from a power of two and lands exactly on min_scale; the held-out ones do not."""

EXPECT = ["land ON the floor", "max(scale / scale_factor, min_scale)"]


class LossScaler:
    def __init__(self, init_scale, scale_factor=2.0, scale_window=1000, min_scale=1.0, delayed_shift=1):
        self.loss_scale = init_scale
        self.factor, self.window, self.min_scale, self.delayed_shift = scale_factor, scale_window, min_scale, delayed_shift
        self.cur_iter, self.last_overflow_iter, self.cur_hysteresis = 0, -1, delayed_shift

    def update_scale(self, overflow):
        if overflow:
            if self.delayed_shift == 1 or self.cur_hysteresis == 1:
                if self.loss_scale / self.factor >= self.min_scale:
                    self.loss_scale /= self.factor
            else:
                self.cur_hysteresis -= 1
            self.last_overflow_iter = self.cur_iter
        elif (self.cur_iter - self.last_overflow_iter) % self.window == 0:
            self.loss_scale *= self.factor
            self.cur_hysteresis = self.delayed_shift
        self.cur_iter += 1
