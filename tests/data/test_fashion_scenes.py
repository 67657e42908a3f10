import os
import re

import numpy as np
import pytest

from conftest import requires_fashion_mnist
from vishwam_keras.data import fashion_mnist, fashion_scenes

pytestmark = requires_fashion_mnist

# Written out again here, so the checks do not reuse the module's tables.
NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
GROUPS = {
    "tops": {"t-shirt", "pullover", "coat", "shirt"},
    "shoes": {"sandal", "sneaker", "ankle boot"},
    "clothes": {"t-shirt", "trouser", "pullover", "dress", "coat", "shirt"},
    "bags": {"bag"},
}
NUMBERS = ["zero", "one", "two", "three", "four"]
GRID = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}
HELD_OUT = {("t-shirt", "bottom right"), ("trouser", "top left"), ("pullover", "top right"),
            ("dress", "bottom left"), ("coat", "bottom right"), ("sandal", "top left"),
            ("shirt", "top right"), ("sneaker", "bottom left"), ("bag", "bottom right"),
            ("ankle boot", "top left")}
POSITION_NAMES = list(GRID)


def _a(name):
    return ("an " if name == "ankle boot" else "a ") + name


def _held_out_count(labels):
    return sum((NAMES[label], POSITION_NAMES[p]) in HELD_OUT for p, label in enumerate(labels))


def _expected_relation(names, relation, subject):
    (position,) = [p for p, name in enumerate(names) if name == subject]
    row, column = divmod(position, 2)
    step = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}[relation]
    row, column = row + step[0], column + step[1]
    assert 0 <= row < 2 and 0 <= column < 2, "asked about a neighbour that does not exist"
    return _a(names[2 * row + column])


def _check_scene_text(labels, caption, qa):
    names = [NAMES[label] for label in labels]
    assert caption == f"{_a(names[0])} and {_a(names[1])} above {_a(names[2])} and {_a(names[3])}"
    relations_asked = set()
    for item in qa:
        question, answer, kind = item.question, item.answer, item.question_type
        if match := re.fullmatch(r"What is in the (.+)\?", question):
            row, column = GRID[match[1]]
            assert (kind, answer) == ("position", _a(names[2 * row + column]))
        elif match := re.fullmatch(r"How many (\w+) are there\?", question):
            count = sum(name in GROUPS[match[1]] for name in names)
            assert (kind, answer) == ("count", NUMBERS[count])
        elif match := re.fullmatch(r"Is there an? (.+)\?", question):
            assert (kind, answer) == ("exists", "yes" if match[1] in names else "no")
        elif match := re.fullmatch(r"What is (left of|right of|above|below) the (.+)\?", question):
            assert names.count(match[2]) == 1, "relation asked about a repeated item"
            assert (kind, answer) == ("relation", _expected_relation(names, match[1], match[2]))
            relations_asked.add(match[2])
        else:
            raise AssertionError(f"unexpected question {question!r}")
    kinds = [item.question_type for item in qa]
    assert kinds.count("position") == 4 and kinds.count("count") == 4
    assert sorted(item.answer for item in qa if item.question_type == "exists") == ["no", "yes"]
    unique = {name for name in names if names.count(name) == 1}
    assert relations_asked == unique and kinds.count("relation") == 2 * len(unique)


def test_scenes_are_deterministic_and_prefixes_agree():
    first = fashion_scenes.make_scenes("validation", 12, seed=3)
    again = fashion_scenes.make_scenes("validation", 12, seed=3)
    fewer = fashion_scenes.make_scenes("validation", 5, seed=3)
    other = fashion_scenes.make_scenes("validation", 12, seed=4)
    np.testing.assert_array_equal(first.images, again.images)
    assert first.captions == again.captions and first.qa == again.qa
    np.testing.assert_array_equal(first.image_indices[:5], fewer.image_indices)
    assert first.qa[:5] == fewer.qa
    assert not np.array_equal(first.image_indices, other.image_indices)


@pytest.mark.parametrize("split", fashion_scenes.SPLITS)
def test_images_labels_and_text_agree(split):
    scenes = fashion_scenes.make_scenes(split, 40)
    assert scenes.images.shape == (40, 56, 56, 1) and scenes.images.dtype == np.uint8
    assert scenes.labels.shape == (40, 4) and len(scenes.captions) == len(scenes.qa) == 40
    source = "train" if split in ("train", "validation") else "test"
    items, item_labels = fashion_mnist.load_fashion_mnist(source)
    for i in range(len(scenes)):
        tiles = [scenes.images[i, r * 28 : r * 28 + 28, c * 28 : c * 28 + 28, 0] for r in (0, 1) for c in (0, 1)]
        for tile, index in zip(tiles, scenes.image_indices[i]):
            np.testing.assert_array_equal(tile, items[index])
        assert len(set(scenes.image_indices[i].tolist())) == 4  # no item twice in a scene
        np.testing.assert_array_equal(scenes.labels[i], item_labels[scenes.image_indices[i]])
        _check_scene_text(scenes.labels[i], scenes.captions[i], scenes.qa[i])


def test_splits_draw_from_disjoint_items():
    ranges = {"train": (0, 55000), "validation": (55000, 60000), "test": (0, 10000), "compositional_test": (0, 10000)}
    for split, (low, high) in ranges.items():
        indices, _ = fashion_scenes.scene_indices(split, 300)
        assert indices.min() >= low and indices.max() < high, split


def test_held_out_pairs_only_in_the_compositional_split():
    assert {tuple(pair) for pair in fashion_scenes.HELD_OUT_PAIRS} == HELD_OUT
    for split in ("train", "validation", "test"):
        _, labels = fashion_scenes.scene_indices(split, 3000)
        assert max(_held_out_count(row) for row in labels) == 0, split
        assert len(np.unique(labels)) == 10  # every class still appears
    _, labels = fashion_scenes.scene_indices("compositional_test", 1000)
    counts = [_held_out_count(row) for row in labels]
    assert min(counts) >= 1
    seen = {(NAMES[label], POSITION_NAMES[p]) for row in labels for p, label in enumerate(row)}
    assert HELD_OUT <= seen


def test_committed_test_indices_match_the_generator():
    path = fashion_scenes.committed_indices_path()
    assert os.path.getsize(path) < 200_000
    committed = fashion_scenes.load_committed_indices()
    fresh = fashion_scenes.generate_committed_indices()
    for split in ("test", "compositional_test"):
        assert committed[split]["image_indices"].shape == (1000, 4)
        np.testing.assert_array_equal(
            committed[split]["image_indices"], np.asarray(fresh["splits"][split]["image_indices"])
        )
        np.testing.assert_array_equal(committed[split]["labels"], np.asarray(fresh["splits"][split]["labels"]))
    scenes = fashion_scenes.make_scenes("test", 7)
    np.testing.assert_array_equal(scenes.image_indices, committed["test"]["image_indices"][:7])


def test_committed_indices_refuse_other_data(monkeypatch):
    images, labels = fashion_mnist.load_fashion_mnist("test")
    shuffled = np.random.default_rng(0).permutation(labels)
    monkeypatch.setattr(fashion_mnist, "load_fashion_mnist", lambda split, data_dir=None: (images, shuffled))
    with pytest.raises(ValueError, match="disagree with the committed 'test' scenes"):
        fashion_scenes.scene_indices("test", 50)


def test_tfds_round_trip(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    fashion_scenes.build_tfds(tmp_path, splits=["test", "compositional_test"], num_scenes=3)
    scenes = fashion_scenes.make_scenes("compositional_test", 3)
    examples = list(fashion_scenes.load_tfds("compositional_test", tmp_path).as_numpy_iterator())
    assert len(examples) == 3
    for i, example in enumerate(examples):
        np.testing.assert_array_equal(example["image"], scenes.images[i])
        np.testing.assert_array_equal(example["labels"], scenes.labels[i])
        assert example["caption"].decode() == scenes.captions[i]
        assert [q.decode() for q in example["qa"]["question"]] == [item.question for item in scenes.qa[i]]
    flat = list(fashion_scenes.load_tfds("compositional_test", tmp_path, per_question=True).as_numpy_iterator())
    assert len(flat) == sum(len(qa) for qa in scenes.qa)
    first = flat[0]
    assert sorted(first) == ["answer", "caption", "image", "labels", "question", "question_type"]
    assert (first["question"].decode(), first["answer"].decode(), first["question_type"].decode()) == (
        scenes.qa[0][0].question, scenes.qa[0][0].answer, scenes.qa[0][0].question_type
    )
    with pytest.raises(FileExistsError):
        fashion_scenes.build_tfds(tmp_path, splits=["test"], num_scenes=3)
    with pytest.raises(FileNotFoundError, match="build_tfds"):
        fashion_scenes.load_tfds("test", tmp_path / "empty")


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        fashion_scenes.make_scenes("dev", 3)
    with pytest.raises(ValueError, match="num_scenes"):
        fashion_scenes.make_scenes("test", -1)


def test_an_item_never_appears_twice_in_a_scene_even_with_tiny_pools():
    source_labels = np.repeat(np.arange(10), 4).astype(np.uint8)  # four items per class
    indices, labels = fashion_scenes.generate_scene_indices("test", 300, 0, source_labels)
    assert all(len(set(row)) == 4 for row in indices.tolist())
    np.testing.assert_array_equal(source_labels[indices], labels)
