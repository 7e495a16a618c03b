"""Wrong: the student's last block is matched too (range(1, L_s + 1))."""
EXPECT = ["LAST block"]


def pkd_pairs(student_layers, teacher_layers, mapping):
    ks = range(1, student_layers + 1)
    if mapping == "skip":
        return [(k, k * teacher_layers // student_layers) for k in ks]
    return [(k, teacher_layers - student_layers + k) for k in ks]
