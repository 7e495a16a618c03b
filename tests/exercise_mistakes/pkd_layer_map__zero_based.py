"""Wrong: blocks counted from 0, as Python lists are."""
EXPECT = ["count from 0"]


def pkd_pairs(student_layers, teacher_layers, mapping):
    ks = range(1, student_layers)
    if mapping == "skip":
        return [(k - 1, k * teacher_layers // student_layers - 1) for k in ks]
    return [(k - 1, teacher_layers - student_layers + k - 1) for k in ks]
