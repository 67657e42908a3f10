"""FashionScenes: 2x2 grids of Fashion-MNIST items with captions and questions from their labels.

Built from `fashion_mnist.py` by fixed seeds; feeds `pipelines.py` (tf.data) and a local TFDS
copy (`build_tfds` / `load_tfds`). The test scenes are pinned by a committed index file.

A scene is a 56x56 grayscale image of four 28x28 items in the grid positions `POSITIONS`
(top left, top right, bottom left, bottom right); its `labels` are the four class ids in
that order. All text is computed from the labels:

- caption: `"a sneaker and a bag above a dress and a coat"` (top row above bottom row);
- `position`: `"What is in the top left?"` -> `"a sneaker"`, for the four positions;
- `count`: `"How many shoes are there?"` -> `"two"`, for each group of `GROUPS`;
- `exists`: `"Is there a bag?"`, one class present (`"yes"`) and one absent (`"no"`),
  picked by the scene index;
- `relation`: `"What is left of the bag?"` -> `"a sneaker"` (also `right of`, `above`,
  `below`), asked only about a class that occurs once in the scene and only where the
  neighbour exists: each such item gets one horizontal and one vertical question.

Splits: `train` uses official train images 0-54,999, `validation` the last 5,000 train
images, `test` and `compositional_test` only official test images. `HELD_OUT_PAIRS` are ten
(class, position) pairs, one per class, that `train`, `validation` and `test` never show;
every `compositional_test` scene shows at least one of them.
"""

import dataclasses
import gzip
import importlib.resources
import json
import os
import pathlib
import shutil

import numpy as np

from vishwam_keras.data import fashion_mnist
from vishwam_keras.data.fashion_mnist import GROUPS, NUM_CLASSES, SHORT_NAMES, with_article

SPLITS = ("train", "validation", "test", "compositional_test")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
SCENE_SIZE = 2 * fashion_mnist.IMAGE_SIZE
VALIDATION_SIZE = 5000
DEFAULT_SEED = 20240601
DEFAULT_NUM_SCENES = {"train": 50000, "validation": 2000, "test": 1000, "compositional_test": 1000}
QUESTION_TYPES = ("position", "count", "exists", "relation")
RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")

# One pair per class, at position (class + 3) % 4, so every class is still seen in three
# of the four positions and every position still sees seven or eight classes.
HELD_OUT_PAIRS = (
    ("t-shirt", "bottom right"),
    ("trouser", "top left"),
    ("pullover", "top right"),
    ("dress", "bottom left"),
    ("coat", "bottom right"),
    ("sandal", "top left"),
    ("shirt", "top right"),
    ("sneaker", "bottom left"),
    ("bag", "bottom right"),
    ("ankle boot", "top left"),
)

TEST_INDICES_FILENAME = "fashion_scenes_test_indices.json.gz"
TEST_INDICES_SPLITS = ("test", "compositional_test")
TEST_INDICES_NUM_SCENES = 1000

TFDS_NAME = "fashion_scenes"
TFDS_VERSION = "1.0.0"


def _build_question_table():
    table = [(f"What is in the {position}?", "position", position, -1) for position in POSITIONS]
    table += [(f"How many {group} are there?", "count", group, -1) for group in GROUPS]
    table += [
        (f"Is there {with_article(name)}?", "exists", with_article(name), label)
        for label, name in enumerate(SHORT_NAMES)
    ]
    table += [
        (f"What is {relation} the {name}?", "relation", f"{relation} the {name}", label)
        for relation in RELATIONS
        for label, name in enumerate(SHORT_NAMES)
    ]
    return tuple(zip(*table))


# Every question and answer string that scenes use; QA pairs are stored as ids into these.
# A question's focus is what it asks about ("top left", "shoes", "a bag", "left of the
# bag"): a "caption_first" answer (`pipelines.ANSWER_FORMATS`) restates it before answering.
# `QUESTION_ITEM` is the class a question names ("Is there a bag?", "What is left of the
# bag?": the bag's id), -1 for position and count questions.
QUESTIONS, QUESTION_TYPE_OF, QUESTION_FOCUS, QUESTION_ITEM = _build_question_table()
ANSWERS = tuple(with_article(name) for name in SHORT_NAMES) + NUMBER_WORDS + ("yes", "no")
_POSITION_Q, _COUNT_Q = 0, len(POSITIONS)
_EXISTS_Q = _COUNT_Q + len(GROUPS)
_RELATION_Q = _EXISTS_Q + NUM_CLASSES
_NUMBER_A = NUM_CLASSES
_YES_A, _NO_A = _NUMBER_A + len(NUMBER_WORDS), _NUMBER_A + len(NUMBER_WORDS) + 1
_GROUP_IDS = [fashion_mnist.group_class_ids(group) for group in GROUPS]


@dataclasses.dataclass(frozen=True, slots=True)
class QuestionAnswer:
    question: str
    answer: str
    question_type: str


@dataclasses.dataclass
class Scenes:
    """A batch of scenes from `make_scenes`.

    Attributes:
        split: str. The split they come from.
        seed: int. The seed that placed them.
        images: uint8 `(N, 56, 56, 1)`.
        labels: uint8 `(N, 4)`, class ids in `POSITIONS` order.
        image_indices: int64 `(N, 4)`, the items' indices in the official Fashion-MNIST
            split (`train` for train/validation scenes, `test` otherwise).
        captions: list of N str.
        qa: list of N lists of `QuestionAnswer`.
    """

    split: str
    seed: int
    images: np.ndarray
    labels: np.ndarray
    image_indices: np.ndarray
    captions: list
    qa: list

    def __len__(self):
        return len(self.labels)


# === Text from labels ===
def caption(labels):
    """`[7, 8, 3, 4]` -> `"a sneaker and a bag above a dress and a coat"`."""
    items = [with_article(SHORT_NAMES[label]) for label in labels]
    return f"{items[0]} and {items[1]} above {items[2]} and {items[3]}"


def neighbour(position, relation):
    """The position that is `relation` ("left of", ...) the item at `position`, or `None`.

    "What is left of the bag?" asks for `neighbour(bag_position, "left of")`.
    """
    row, column = divmod(position, 2)
    if relation == "left of":
        return position - 1 if column == 1 else None
    if relation == "right of":
        return position + 1 if column == 0 else None
    if relation == "above":
        return position - 2 if row == 1 else None
    if relation == "below":
        return position + 2 if row == 0 else None
    raise ValueError(f"Unknown relation {relation!r}. Known: {RELATIONS}")


def question_answer_ids(labels, scene_index):
    """The scene's questions as `(question_id, answer_id)` pairs into `QUESTIONS`/`ANSWERS`.

    Deterministic in `(labels, scene_index)`: the scene index picks which present and
    which absent class the two `exists` questions ask about.
    """
    labels = [int(label) for label in labels]
    pairs = [(_POSITION_Q + p, labels[p]) for p in range(len(POSITIONS))]
    for g, class_ids in enumerate(_GROUP_IDS):
        pairs.append((_COUNT_Q + g, _NUMBER_A + sum(label in class_ids for label in labels)))
    present = sorted(set(labels))
    absent = [c for c in range(NUM_CLASSES) if c not in present]
    pairs.append((_EXISTS_Q + present[scene_index % len(present)], _YES_A))
    pairs.append((_EXISTS_Q + absent[scene_index % len(absent)], _NO_A))
    for position, label in enumerate(labels):
        if labels.count(label) != 1:
            continue
        for r, relation in enumerate(RELATIONS):
            other = neighbour(position, relation)
            if other is not None:
                pairs.append((_RELATION_Q + r * NUM_CLASSES + label, labels[other]))
    return pairs


def question_answers(labels, scene_index):
    """The scene's questions as `QuestionAnswer`s (see `question_answer_ids`)."""
    return [
        QuestionAnswer(QUESTIONS[q], ANSWERS[a], QUESTION_TYPE_OF[q])
        for q, a in question_answer_ids(labels, scene_index)
    ]


# === Scene placement ===
def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")


def source_split(split):
    """The official Fashion-MNIST split a scene split draws from: `"train"` or `"test"`."""
    _check_split(split)
    return "train" if split in ("train", "validation") else "test"


def source_range(split, num_source_items):
    """`(start, stop)` of the official items a scene split may use."""
    if split == "train":
        return 0, num_source_items - VALIDATION_SIZE
    if split == "validation":
        return num_source_items - VALIDATION_SIZE, num_source_items
    return 0, num_source_items


def held_out_position_ids():
    """`HELD_OUT_PAIRS` as `(class_id, position_id)` pairs."""
    return [(fashion_mnist.class_id(c), POSITIONS.index(p)) for c, p in HELD_OUT_PAIRS]


def generate_scene_indices(split, num_scenes, seed, source_labels):
    """Places items in scenes: returns int64 `image_indices` and uint8 `labels`, both `(N, 4)`.

    Each position draws a class uniformly from those allowed there, then an item of that
    class uniformly from the split's items (never the same item twice in one scene). A
    `compositional_test` scene first places one of `HELD_OUT_PAIRS` (uniformly), then fills
    its other positions from all classes; other splits never use a held-out pair. Scene
    `i` depends only on `(split, seed, i)`: fewer scenes give a prefix of more scenes.

    Args:
        split: str, one of `SPLITS`.
        num_scenes: int >= 0.
        seed: int >= 0.
        source_labels: uint8 `(M,)`, labels of the official split (`source_split(split)`).
    """
    _check_split(split)
    if isinstance(num_scenes, bool) or not isinstance(num_scenes, (int, np.integer)) or num_scenes < 0:
        raise ValueError(f"`num_scenes` must be an int >= 0. Received: num_scenes={num_scenes!r}")
    start, stop = source_range(split, len(source_labels))
    pool_labels = np.asarray(source_labels)[start:stop]
    pools = [start + np.flatnonzero(pool_labels == c) for c in range(NUM_CLASSES)]
    held_out = held_out_position_ids()
    compositional = split == "compositional_test"
    allowed = [
        np.array([c for c in range(NUM_CLASSES) if compositional or (c, p) not in held_out])
        for p in range(len(POSITIONS))
    ]
    if any(len(pools[c]) < len(POSITIONS) for a in allowed for c in a):
        raise ValueError(f"Split {split!r} has fewer than 4 items of some class: cannot place scenes.")
    # One row of uniforms per scene (row-major), so scene i only depends on row i.
    uniforms = np.random.default_rng([seed, SPLITS.index(split)]).random((num_scenes, 9))
    labels = np.stack(
        [allowed[p][(uniforms[:, p] * len(allowed[p])).astype(int)] for p in range(4)], axis=1
    )
    if compositional:
        forced = (uniforms[:, 8] * len(held_out)).astype(int)
        for pair, (class_id, position) in enumerate(held_out):
            labels[forced == pair, position] = class_id
    indices = np.zeros((num_scenes, 4), np.int64)
    for position in range(4):
        for class_id in range(NUM_CLASSES):
            rows = np.flatnonzero(labels[:, position] == class_id)
            picks = (uniforms[rows, 4 + position] * len(pools[class_id])).astype(int)
            indices[rows, position] = pools[class_id][picks]
    _separate_repeated_items(indices, labels, pools)
    return indices, labels.astype(np.uint8)


def _separate_repeated_items(indices, labels, pools):
    """Where one item would appear twice in a scene, take the next item of its class."""
    for position in range(1, 4):
        for row in np.flatnonzero((indices[:, :position] == indices[:, position : position + 1]).any(1)):
            pool = pools[labels[row, position]]
            at = int(np.searchsorted(pool, indices[row, position]))
            while indices[row, position] in indices[row, :position]:
                at = (at + 1) % len(pool)
                indices[row, position] = pool[at]


def scene_indices(split, num_scenes, seed=DEFAULT_SEED, data_dir=None):
    """`(image_indices, labels)` for a split: the committed indices where they apply.

    With the default seed, the first `TEST_INDICES_NUM_SCENES` scenes of `test` and
    `compositional_test` come from the committed `fashion_scenes_test_indices.json.gz`,
    so published results never depend on the random generator's version; the labels of
    the loaded Fashion-MNIST must agree with the committed ones.
    """
    _, source_labels = fashion_mnist.load_fashion_mnist(source_split(split), data_dir)
    indices, labels = generate_scene_indices(split, num_scenes, seed, source_labels)
    if split in TEST_INDICES_SPLITS and seed == DEFAULT_SEED:
        committed = load_committed_indices()[split]
        count = min(num_scenes, len(committed["image_indices"]))
        indices[:count] = committed["image_indices"][:count]
        labels[:count] = committed["labels"][:count]
        if not np.array_equal(source_labels[indices[:count]], labels[:count]):
            raise ValueError(
                f"The Fashion-MNIST test labels found ({fashion_mnist.find_fashion_mnist(data_dir)}) "
                f"disagree with the committed {split!r} scenes: the data is not the official "
                "release, or its order differs."
            )
    return indices, labels


def compose_images(items):
    """Items `(N, 4, 28, 28)` in `POSITIONS` order -> scenes `(N, 56, 56, 1)`."""
    items = np.asarray(items)
    n, _, size, _ = items.shape
    grid = items.reshape(n, 2, 2, size, size).transpose(0, 1, 3, 2, 4)
    return grid.reshape(n, 2 * size, 2 * size, 1)


def make_scenes(split, num_scenes, seed=DEFAULT_SEED, data_dir=None):
    """Builds `num_scenes` FashionScenes of a split, deterministically.

    Args:
        split: str. One of `"train"`, `"validation"`, `"test"`, `"compositional_test"`.
        num_scenes: int. How many scenes.
        seed: int. Placement seed. Defaults to `DEFAULT_SEED` (for the test splits, the
            committed indices).
        data_dir: str, optional. Fashion-MNIST folder (see `load_fashion_mnist`).

    Returns:
        A `Scenes`.

    Example:
    >>> scenes = make_scenes("test", 2)
    >>> scenes.images.shape, scenes.labels.shape
    ((2, 56, 56, 1), (2, 4))
    >>> scenes.qa[0][0].question
    'What is in the top left?'
    """
    indices, labels = scene_indices(split, num_scenes, seed, data_dir)
    source_images, _ = fashion_mnist.load_fashion_mnist(source_split(split), data_dir)
    return Scenes(
        split=split,
        seed=seed,
        images=compose_images(source_images[indices]),
        labels=labels,
        image_indices=indices,
        captions=[caption(row) for row in labels],
        qa=[question_answers(row, i) for i, row in enumerate(labels)],
    )


# === The committed test indices ===
def committed_indices_path():
    return str(importlib.resources.files("vishwam_keras") / "data" / TEST_INDICES_FILENAME)


def generate_committed_indices(num_scenes=TEST_INDICES_NUM_SCENES, seed=DEFAULT_SEED, data_dir=None):
    """The content of the committed test index file, freshly generated."""
    _, test_labels = fashion_mnist.load_fashion_mnist("test", data_dir)
    content = {
        "description": "FashionScenes test scenes: indices into the official Fashion-MNIST "
        "test set (t10k, file order), in POSITIONS order; labels for checking.",
        "seed": seed,
        "positions": list(POSITIONS),
        "held_out_pairs": [list(pair) for pair in HELD_OUT_PAIRS],
        "splits": {},
    }
    for split in TEST_INDICES_SPLITS:
        indices, labels = generate_scene_indices(split, num_scenes, seed, test_labels)
        content["splits"][split] = {
            "image_indices": indices.tolist(),
            "labels": labels.tolist(),
        }
    return content


def write_committed_indices(path=None, num_scenes=TEST_INDICES_NUM_SCENES, data_dir=None):
    """Regenerates the committed `fashion_scenes_test_indices.json.gz` (maintainers)."""
    path = path or committed_indices_path()
    content = generate_committed_indices(num_scenes, DEFAULT_SEED, data_dir)
    text = json.dumps(content, separators=(",", ":"))
    with gzip.GzipFile(path, "wb", mtime=0, compresslevel=9) as file:
        file.write(text.encode("utf-8"))
    return path


def load_committed_indices(path=None):
    """The committed test scenes: `{split: {"image_indices": (N, 4), "labels": (N, 4)}}`."""
    with gzip.open(path or committed_indices_path(), "rt", encoding="utf-8") as file:
        content = json.load(file)
    return {
        split: {
            "image_indices": np.asarray(data["image_indices"], np.int64),
            "labels": np.asarray(data["labels"], np.uint8),
        }
        for split, data in content["splits"].items()
    }


# === TFDS ===
def tfds_features():
    """The `fashion_scenes` TFDS features: one example per scene, its questions nested."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(SCENE_SIZE, SCENE_SIZE, 1)),
            "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=SHORT_NAMES), length=4),
            "image_indices": tfds.features.Tensor(shape=(4,), dtype=np.int32),
            "caption": tfds.features.Text(),
            "qa": tfds.features.Sequence(
                {
                    "question": tfds.features.Text(),
                    "answer": tfds.features.Text(),
                    "question_type": tfds.features.ClassLabel(names=QUESTION_TYPES),
                }
            ),
        }
    )


def _tfds_examples(split, num_scenes, seed, source_dir):
    """Yields `(key, example)` pairs; a generator, so a split is built only when written."""
    scenes = make_scenes(split, num_scenes, seed, source_dir)
    for index in range(len(scenes)):
        qa = scenes.qa[index]
        yield index, {
            "image": scenes.images[index],
            "labels": scenes.labels[index].astype(np.int64),
            "image_indices": scenes.image_indices[index].astype(np.int32),
            "caption": scenes.captions[index],
            "qa": {
                "question": [item.question for item in qa],
                "answer": [item.answer for item in qa],
                "question_type": [item.question_type for item in qa],
            },
        }


def build_tfds(
    data_dir, splits=SPLITS, num_scenes=None, seed=DEFAULT_SEED, source_dir=None, overwrite=False
):
    """Writes FashionScenes as the TFDS dataset `fashion_scenes` into `data_dir`, offline.

    Uses `tfds.dataset_builders.store_as_tfds_dataset`; examples keep scene order.

    Args:
        data_dir: str or path. TFDS data folder to write into.
        splits: list of str, from `SPLITS`. Defaults to all four.
        num_scenes: `None`, an int for every split, or a dict split -> int. Defaults to
            `DEFAULT_NUM_SCENES`.
        seed: int. Defaults to `DEFAULT_SEED`.
        source_dir: str, optional. Fashion-MNIST folder (see `load_fashion_mnist`).
        overwrite: bool. Replace an existing copy; otherwise an existing copy is an error.
            Defaults to `False`.

    Returns:
        The TFDS builder.
    """
    import tensorflow_datasets as tfds

    splits = [splits] if isinstance(splits, str) else list(splits)
    for split in splits:
        _check_split(split)
    counts = {split: _split_count(num_scenes, split) for split in splits}
    bad = {
        split: count
        for split, count in counts.items()
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1
    }
    if bad:
        raise ValueError(f"`num_scenes` must give each split an int >= 1. Received: {bad}")
    fashion_mnist.find_fashion_mnist(source_dir)  # fail early, before TFDS starts writing
    target = pathlib.Path(data_dir) / TFDS_NAME / TFDS_VERSION
    if target.exists():
        if not overwrite:
            raise FileExistsError(
                f"'{target}' already exists. Load it with `load_tfds`, or pass overwrite=True."
            )
        shutil.rmtree(target)
    split_examples = {split: _tfds_examples(split, counts[split], seed, source_dir) for split in splits}
    return tfds.dataset_builders.store_as_tfds_dataset(
        name=TFDS_NAME,
        version=TFDS_VERSION,
        features=tfds_features(),
        split_datasets=split_examples,
        data_dir=os.fspath(data_dir),
        description=(
            "FashionScenes: 2x2 grids of Fashion-MNIST items with captions and questions "
            f"computed from their labels (seed {seed}). Built by vishwam_keras."
        ),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        disable_shuffling=True,
    )


def _split_count(num_scenes, split):
    if num_scenes is None:
        return DEFAULT_NUM_SCENES[split]
    if isinstance(num_scenes, dict):
        return num_scenes.get(split, DEFAULT_NUM_SCENES[split])
    return num_scenes


def load_tfds(split, data_dir, per_question=False):
    """Reads a `fashion_scenes` split written by `build_tfds` (never downloads).

    Args:
        split: str. A split that was built (TFDS slicing like `"test[:10]"` works).
        data_dir: str or path. The folder given to `build_tfds`.
        per_question: bool. If `True`, one example per question with keys `image`,
            `labels`, `caption`, `question`, `answer`, `question_type` (a string);
            otherwise one example per scene with its questions nested under `qa`.
            Defaults to `False`.

    Returns:
        A `tf.data.Dataset`.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    folder = pathlib.Path(data_dir) / TFDS_NAME / TFDS_VERSION
    if not (folder / "dataset_info.json").is_file():
        raise FileNotFoundError(
            f"No `{TFDS_NAME}` TFDS dataset in '{data_dir}' (looked for '{folder}'). "
            "Build it with `build_tfds(data_dir)`."
        )
    builder = tfds.builder_from_directory(os.fspath(folder))
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    if not per_question:
        return dataset
    type_names = tf.constant(QUESTION_TYPES)

    def flatten(scene):
        qa = scene["qa"]
        count = tf.shape(qa["question"])[0]
        repeated = {
            key: tf.repeat(scene[key][None], count, axis=0) for key in ("image", "labels", "caption")
        }
        repeated.update(
            question=qa["question"],
            answer=qa["answer"],
            question_type=tf.gather(type_names, qa["question_type"]),
        )
        return tf.data.Dataset.from_tensor_slices(repeated)

    return dataset.flat_map(flatten)
