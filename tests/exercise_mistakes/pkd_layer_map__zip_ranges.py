"""A right solution written another way: the teacher blocks listed first (a range for Last, a
comprehension with divmod for Skip), then zipped with the student blocks. Must pass."""
EXPECT = []


def pkd_pairs(student_layers, teacher_layers, mapping):
    n = student_layers - 1
    if mapping == "last":
        teacher = list(range(teacher_layers - n, teacher_layers))
    else:
        teacher = [divmod(k * teacher_layers, student_layers)[0] for k in range(1, n + 1)]
    return list(zip(range(1, n + 1), teacher))
