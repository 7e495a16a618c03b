"""A right solution: the two formulas over k = 1 … L_s − 1. Must pass."""
EXPECT = []


def pkd_pairs(student_layers, teacher_layers, mapping):
    ks = range(1, student_layers)
    if mapping == "skip":
        return [(k, k * teacher_layers // student_layers) for k in ks]
    return [(k, teacher_layers - student_layers + k) for k in ks]
