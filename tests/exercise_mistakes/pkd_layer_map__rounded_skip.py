"""Wrong: PKD-Skip rounds k·L_t/L_s to the nearest block. Every fixed case divides evenly, so
only the held-out depths show it."""
EXPECT = ["takes the floor"]


def pkd_pairs(student_layers, teacher_layers, mapping):
    ks = range(1, student_layers)
    if mapping == "skip":
        return [(k, round(k * teacher_layers / student_layers)) for k in ks]
    return [(k, teacher_layers - student_layers + k) for k in ks]
