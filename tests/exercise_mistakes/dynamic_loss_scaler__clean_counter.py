"""A right solution written another way: a count of clean iterations since the last overflow
(or the start) instead of DeepSpeed's cur_iter / last_overflow_iter, the scale as a property
over a private field, min() for the floor. Must pass."""

EXPECT = []


class LossScaler:
    def __init__(self, init_scale, scale_factor=2.0, scale_window=1000, min_scale=1.0, delayed_shift=1):
        self._scale = float(init_scale)
        self.scale_factor, self.scale_window = scale_factor, scale_window
        self.min_scale, self.delayed_shift = min_scale, delayed_shift
        self.clean = 0                  # clean iterations since the last overflow (or the start)
        self.budget = delayed_shift

    @property
    def loss_scale(self):
        return self._scale

    def update_scale(self, overflow):
        if overflow:
            self.clean = 0
            if self.budget <= 1:
                self._scale = -min(-self._scale / self.scale_factor, -self.min_scale)
            else:
                self.budget -= 1
            return
        self.clean += 1
        if self.clean % self.scale_window == 0:
            self._scale *= self.scale_factor
            self.budget = self.delayed_shift
