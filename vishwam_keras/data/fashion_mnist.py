"""Fashion-MNIST, read offline from its standard idx files: 70,000 28x28 grayscale items.

The source of `fashion_scenes.py`; found in a user folder, `$VISHWAM_DATA_DIR`, Debian's
`dataset-fashion-mnist` package or an already prepared TFDS copy. Never downloads.
"""

import functools
import gzip
import hashlib
import os
import pathlib
import warnings
import zlib

import numpy as np

DATA_DIR_ENV_VAR = "VISHWAM_DATA_DIR"
DEBIAN_DATA_DIR = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "test")
IMAGE_SIZE = 28

# The ten classes, in label order (Xiao et al. 2017, arXiv:1708.07747).
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Lower-case names that read naturally in a sentence ("a t-shirt", "an ankle boot").
SHORT_NAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
PLURAL_NAMES = (
    "t-shirts", "trousers", "pullovers", "dresses", "coats",
    "sandals", "shirts", "sneakers", "bags", "ankle boots",
)
NUM_CLASSES = len(CLASS_NAMES)

# Groups of classes, by short name. `tops` are garments worn on the upper body (a coat
# is outerwear worn on top); a dress is a one-piece garment, so it is not a top.
# `clothes` is every garment (everything but shoes and bags). Groups may overlap.
GROUPS = {
    "tops": ("t-shirt", "pullover", "coat", "shirt"),
    "shoes": ("sandal", "sneaker", "ankle boot"),
    "clothes": ("t-shirt", "trouser", "pullover", "dress", "coat", "shirt"),
    "bags": ("bag",),
}

# idx magic numbers: 0x0000 0803 = unsigned bytes, 3 dimensions; 0x0000 0801 = 1 dimension.
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801
_FILE_STEMS = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# SHA-256 of the uncompressed official files (zalandoresearch/fashion-mnist; Debian's
# `dataset-fashion-mnist` ships the same bytes). Only used to warn about other data.
OFFICIAL_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
OFFICIAL_NUM_EXAMPLES = {"train": 60000, "test": 10000}

_HOW_TO_GET_IT = (
    "Install Debian's package (`apt-get install dataset-fashion-mnist`, files in "
    f"{DEBIAN_DATA_DIR}), or set ${DATA_DIR_ENV_VAR} to a folder holding the four files "
    + ", ".join(f"`{stem}.gz`" for stem in _FILE_STEMS.values())
    + " (from https://github.com/zalandoresearch/fashion-mnist; uncompressed files work "
    "too), or prepare TFDS's `fashion_mnist` beforehand."
)


class FashionMNISTNotFoundError(FileNotFoundError, ValueError):
    """Fashion-MNIST (or one of its files) is not where it was looked for."""


def class_id(name):
    """The label of a class given its short name (`"ankle boot"`) or full name."""
    for names in (SHORT_NAMES, CLASS_NAMES):
        if name in names:
            return names.index(name)
    raise ValueError(f"Unknown Fashion-MNIST class {name!r}. Known: {list(SHORT_NAMES)}")


def group_class_ids(group):
    """The labels of a group's classes, e.g. `group_class_ids("shoes") == (5, 7, 9)`."""
    if group not in GROUPS:
        raise ValueError(f"Unknown group {group!r}. Known: {sorted(GROUPS)}")
    return tuple(class_id(name) for name in GROUPS[group])


def with_article(short_name):
    """`"sneaker"` -> `"a sneaker"`, `"ankle boot"` -> `"an ankle boot"`."""
    return ("an " if short_name[0] in "aeiou" else "a ") + short_name


def load_fashion_mnist(split="train", data_dir=None, tfds_data_dir=None):
    """Returns Fashion-MNIST `(images, labels)` for a split, in the official order.

    Sources, first found wins: `data_dir` (if given, it must hold the files), then
    `$VISHWAM_DATA_DIR` (or its `fashion-mnist/` subfolder), then Debian's
    `/usr/share/datasets/fashion-mnist`, then TFDS's `fashion_mnist` if it is already
    prepared (TFDS stores examples shuffled by a hash of their index; the official order
    is restored). Nothing is downloaded. Files are checked (magic number, shapes, sizes,
    labels in range); data that differs from the official release gives a warning.

    Args:
        split: str. `"train"` (60,000 items) or `"test"` (10,000 items). Defaults to
            `"train"`.
        data_dir: str or path, optional. A folder with the idx files, `.gz` or not.
            Defaults to `None`.
        tfds_data_dir: str, optional. TFDS data folder to look in. Defaults to `None`
            (TFDS's default, `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).

    Returns:
        `images`, uint8 `(N, 28, 28)`, and `labels`, uint8 `(N,)`, both read-only.

    Raises:
        FashionMNISTNotFoundError: (a `FileNotFoundError` and a `ValueError`) no source
            holds the files, or a folder lacks some; the message says how to get them.
        ValueError: a file is corrupt or truncated; the message names it.

    Example:
    >>> images, labels = load_fashion_mnist("test")
    >>> images.shape, SHORT_NAMES[labels[0]]
    ((10000, 28, 28), 'ankle boot')
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
    source = find_fashion_mnist(data_dir, tfds_data_dir)
    return _load_cached(source, split)


def find_fashion_mnist(data_dir=None, tfds_data_dir=None):
    """Returns the source used by `load_fashion_mnist`: a folder path or `"tfds:<dir>"`."""
    if data_dir is not None:
        folder = pathlib.Path(data_dir).expanduser()
        if not folder.is_dir():
            raise FashionMNISTNotFoundError(
                f"Fashion-MNIST folder '{folder}' does not exist. {_HOW_TO_GET_IT}"
            )
        for candidate in (folder, folder / "fashion-mnist"):
            if _present_files(candidate):
                _check_complete(candidate)
                return str(candidate)
        _check_complete(folder)  # raises, naming the missing files
    candidates = []
    if os.environ.get(DATA_DIR_ENV_VAR):
        env_dir = pathlib.Path(os.environ[DATA_DIR_ENV_VAR]).expanduser()
        candidates += [env_dir, env_dir / "fashion-mnist", env_dir / "fashion_mnist"]
    candidates.append(pathlib.Path(DEBIAN_DATA_DIR))
    for candidate in candidates:
        if _present_files(candidate):
            _check_complete(candidate)
            return str(candidate)
    tfds_dir = _prepared_tfds_dir(tfds_data_dir)
    if tfds_dir is not None:
        return "tfds:" + tfds_dir
    searched = ", ".join(f"'{c}'" for c in candidates)
    raise FashionMNISTNotFoundError(
        f"Fashion-MNIST was not found (searched {searched} and TFDS's prepared "
        f"`fashion_mnist`). {_HOW_TO_GET_IT}"
    )


def read_idx_images(path):
    """Reads an idx3 image file (`.gz` or not) into uint8 `(N, 28, 28)`, checking it."""
    data = _read_bytes(path)
    count, rows, cols = _check_header(path, data, _IMAGES_MAGIC, num_dims=3)
    if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"'{path}' holds {rows}x{cols} images; Fashion-MNIST images are "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}. Is it the right file?"
        )
    _check_size(path, data, header=16, expected=count * rows * cols)
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)


def read_idx_labels(path):
    """Reads an idx1 label file (`.gz` or not) into uint8 `(N,)`, checking it."""
    data = _read_bytes(path)
    (count,) = _check_header(path, data, _LABELS_MAGIC, num_dims=1)
    _check_size(path, data, header=8, expected=count)
    labels = np.frombuffer(data, np.uint8, offset=8)
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(
            f"'{path}' has label {int(labels.max())}; Fashion-MNIST labels are 0 to "
            f"{NUM_CLASSES - 1}. The file is corrupt or not a Fashion-MNIST label file."
        )
    return labels


# === Sources ===
def _file_path(folder, split, kind):
    stem = _FILE_STEMS[(split, kind)]
    for name in (stem + ".gz", stem):
        if (pathlib.Path(folder) / name).is_file():
            return pathlib.Path(folder) / name
    return None


def _present_files(folder):
    return [key for key in _FILE_STEMS if _file_path(folder, *key) is not None]


def _check_complete(folder):
    missing = [_FILE_STEMS[key] for key in _FILE_STEMS if _file_path(folder, *key) is None]
    if missing:
        names = ", ".join(f"'{name}.gz'" for name in missing)
        raise FashionMNISTNotFoundError(
            f"Fashion-MNIST folder '{folder}' is missing {names}. {_HOW_TO_GET_IT}"
        )


def _prepared_tfds_dir(tfds_data_dir):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    try:
        builder = tfds.builder("fashion_mnist", data_dir=tfds_data_dir)
    except Exception:  # Not registered, or an unreadable folder: not a usable source.
        return None
    return str(builder.data_dir) if builder.is_prepared() else None


@functools.lru_cache(maxsize=8)
def _load_cached(source, split):
    if source.startswith("tfds:"):
        images, labels = _read_tfds(source[len("tfds:") :], split)
    else:
        image_path = _file_path(source, split, "images")
        label_path = _file_path(source, split, "labels")
        images, labels = read_idx_images(image_path), read_idx_labels(label_path)
        if len(images) != len(labels):
            raise ValueError(
                f"'{image_path}' has {len(images)} images but '{label_path}' has "
                f"{len(labels)} labels: one of the files is truncated or from another set."
            )
    for kind, array, magic in (("images", images, _IMAGES_MAGIC), ("labels", labels, _LABELS_MAGIC)):
        name = _FILE_STEMS[(split, kind)]
        if _idx_sha256(array, magic) != OFFICIAL_SHA256[name]:
            warnings.warn(
                f"Fashion-MNIST '{name}' from '{source}' differs from the official release "
                "(SHA-256 mismatch). Scenes built from it will not match published ones.",
                stacklevel=3,
            )
    images, labels = np.array(images), np.array(labels)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _read_tfds(data_dir, split):
    """Reads a prepared TFDS `fashion_mnist` split and restores the official order.

    TFDS writes the examples of a split sorted by `Hasher(salt=split).hash_key(key)`,
    and its `fashion_mnist` builder keys each example by its index in the idx file.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import hashing

    builder = tfds.builder_from_directory(data_dir)
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    stored_images, stored_labels = data["image"][..., 0], data["label"].astype(np.uint8)
    hasher = hashing.Hasher(split)
    hashed = [hasher.hash_key(index) for index in range(len(stored_labels))]
    stored_order = sorted(range(len(hashed)), key=hashed.__getitem__)
    images = np.empty_like(stored_images)
    labels = np.empty_like(stored_labels)
    images[stored_order], labels[stored_order] = stored_images, stored_labels
    return images, labels


# === idx parsing ===
def _read_bytes(path):
    if path is None or not os.path.isfile(path):
        raise FashionMNISTNotFoundError(f"Fashion-MNIST file '{path}' does not exist. {_HOW_TO_GET_IT}")
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rb") as file:
                return file.read()
        return pathlib.Path(path).read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(
            f"Could not read '{path}': {error}. The file is truncated or corrupt; "
            f"fetch it again. {_HOW_TO_GET_IT}"
        ) from error


def _check_header(path, data, magic, num_dims):
    header_size = 4 + 4 * num_dims
    if len(data) < header_size:
        raise ValueError(
            f"'{path}' is {len(data)} bytes, shorter than an idx header "
            f"({header_size} bytes). The file is truncated or corrupt."
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(
            f"'{path}' has magic number {found:#010x}, expected {magic:#010x} "
            f"(an idx{num_dims} file of unsigned bytes). The file is corrupt or not a "
            f"Fashion-MNIST {'image' if num_dims == 3 else 'label'} file."
        )
    return tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))


def _check_size(path, data, header, expected):
    if len(data) - header != expected:
        raise ValueError(
            f"'{path}' has {len(data) - header} data bytes but its header announces "
            f"{expected}. The file is truncated or corrupt; fetch it again."
        )


def _idx_sha256(array, magic):
    """SHA-256 of the idx file that would hold `array` (header + bytes), without writing it."""
    digest = hashlib.sha256(magic.to_bytes(4, "big"))
    for size in array.shape:
        digest.update(int(size).to_bytes(4, "big"))
    digest.update(np.ascontiguousarray(array, np.uint8))
    return digest.hexdigest()
