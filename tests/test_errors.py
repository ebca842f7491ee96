"""User-facing error helpers: class-list mismatches say where two lists differ, in one line."""

from __future__ import annotations

from visionlab.errors import describe_class_mismatch

CLASSES = [f"class_{i:02d}" for i in range(20)]


def test_one_renamed_class_is_named_with_its_index() -> None:
    other = list(CLASSES)
    other[10] = "klass_10"
    message = describe_class_mismatch("split 'train'", CLASSES, "split 'val'", other)
    assert message == (
        "split 'train' has 20 classes, split 'val' has 20; they differ at [10] 'class_10' vs "
        "'klass_10'"
    )


def test_different_lengths_name_the_classes_only_one_side_has() -> None:
    message = describe_class_mismatch("the dataset", [*CLASSES, "zebra"], "the checkpoint", CLASSES)
    assert (
        message == "the dataset has 21 classes, the checkpoint has 20; only the dataset has 'zebra'"
    )
    message = describe_class_mismatch("the dataset", CLASSES[:2], "the checkpoint", CLASSES)
    assert message.startswith(
        "the dataset has 2 classes, the checkpoint has 20; only the checkpoint"
    )
    assert "'class_02', 'class_03', 'class_04' and 15 more" in message


def test_duplicates_without_other_names_fall_back_to_positions() -> None:
    message = describe_class_mismatch("a", ["cat", "dog"], "b", ["cat", "dog", "dog"])
    assert message == "a has 2 classes, b has 3; they differ at [2] (none) vs 'dog'"


def test_reordered_lists_say_so_and_show_the_first_differences() -> None:
    reordered = list(reversed(CLASSES))
    message = describe_class_mismatch("the dataset", CLASSES, "the checkpoint", reordered)
    assert message == (
        "the dataset has 20 classes, the checkpoint has 20: the same names in another order; "
        "they differ at [0] 'class_00' vs 'class_19', [1] 'class_01' vs 'class_18', "
        "[2] 'class_02' vs 'class_17' and 17 more"
    )


def test_the_line_stays_short_whatever_the_names() -> None:
    long_a = [f"{'a' * 500}{i}" for i in range(1000)]
    long_b = [f"{'b' * 500}{i}" for i in range(999)]
    for left, right in ((long_a, long_b), (long_a, long_a[::-1]), (["x\ny"], ["x\nz"])):
        message = describe_class_mismatch("left", left, "right", right)
        assert len(message) < 400 and "\n" not in message


def test_one_class_is_singular_and_equal_lists_say_so() -> None:
    assert describe_class_mismatch("a", ["cat"], "b", ["dog"]) == (
        "a has 1 class, b has 1; they differ at [0] 'cat' vs 'dog'"
    )
    assert describe_class_mismatch("a", CLASSES, "b", tuple(CLASSES)) == (
        "a and b have the same 20 classes"
    )
