import gzip
import os

import numpy as np
import pytest

from vishwam_keras.data import fashion_mnist

DEBIAN_FILES = [
    os.path.join(fashion_mnist.DEBIAN_DATA_DIR, name + ".gz") for name in fashion_mnist.OFFICIAL_SHA256
]
requires_debian_files = pytest.mark.skipif(
    not all(os.path.isfile(path) for path in DEBIAN_FILES),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
STEMS = {
    "train-images-idx3-ubyte": (2051, (6, 28, 28)),
    "train-labels-idx1-ubyte": (2049, (6,)),
    "t10k-images-idx3-ubyte": (2051, (4, 28, 28)),
    "t10k-labels-idx1-ubyte": (2049, (4,)),
}


def _idx(magic, array):
    dims = b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def _write_set(folder, compress=True, skip=()):
    """Writes a tiny, valid Fashion-MNIST-format set; returns the arrays written."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for stem, (magic, shape) in STEMS.items():
        high = 10 if magic == 2049 else 256
        arrays[stem] = rng.integers(0, high, shape).astype(np.uint8)
        if stem in skip:
            continue
        data = _idx(magic, arrays[stem])
        if compress:
            with gzip.open(os.path.join(folder, stem + ".gz"), "wb") as file:
                file.write(data)
        else:
            with open(os.path.join(folder, stem), "wb") as file:
                file.write(data)
    return arrays


@pytest.fixture
def no_default_sources(monkeypatch, tmp_path):
    """No `$VISHWAM_DATA_DIR`, no Debian folder: only what a test passes is found."""
    monkeypatch.delenv(fashion_mnist.DATA_DIR_ENV_VAR, raising=False)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DATA_DIR", str(tmp_path / "no-debian"))
    fashion_mnist._load_cached.cache_clear()
    yield
    fashion_mnist._load_cached.cache_clear()


@requires_debian_files
def test_reads_the_debian_files(monkeypatch):
    monkeypatch.delenv(fashion_mnist.DATA_DIR_ENV_VAR, raising=False)
    assert fashion_mnist.find_fashion_mnist() == fashion_mnist.DEBIAN_DATA_DIR
    images, labels = fashion_mnist.load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10  # the test set is balanced
    assert labels[:5].tolist() == [9, 2, 1, 1, 6]  # ankle boot, pullover, trouser, ...
    assert not images.flags.writeable


@pytest.mark.parametrize("compress", [True, False])
def test_reads_a_user_folder_gz_or_raw(tmp_path, no_default_sources, compress):
    arrays = _write_set(tmp_path / "fm", compress=compress)
    with pytest.warns(UserWarning, match="differs from the official release"):
        images, labels = fashion_mnist.load_fashion_mnist("train", data_dir=tmp_path / "fm")
    np.testing.assert_array_equal(images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels, arrays["train-labels-idx1-ubyte"])


def test_env_var_folder_and_its_subfolder(tmp_path, monkeypatch, no_default_sources):
    _write_set(tmp_path / "fashion-mnist")
    monkeypatch.setenv(fashion_mnist.DATA_DIR_ENV_VAR, str(tmp_path))
    assert fashion_mnist.find_fashion_mnist() == str(tmp_path / "fashion-mnist")


def test_no_source_says_how_to_get_it(tmp_path, no_default_sources):
    with pytest.raises(fashion_mnist.FashionMNISTNotFoundError) as info:
        fashion_mnist.load_fashion_mnist("test", tfds_data_dir=str(tmp_path / "no-tfds"))
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "VISHWAM_DATA_DIR" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)


def test_missing_files_and_folders_are_named(tmp_path, no_default_sources):
    _write_set(tmp_path / "fm", skip=("t10k-labels-idx1-ubyte",))
    with pytest.raises(ValueError, match="missing 't10k-labels-idx1-ubyte.gz'"):
        fashion_mnist.load_fashion_mnist("test", data_dir=tmp_path / "fm")
    with pytest.raises(ValueError, match="does not exist"):
        fashion_mnist.load_fashion_mnist("test", data_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split"):
        fashion_mnist.load_fashion_mnist("validation")


def _corrupt(path, how):
    data = gzip.open(path).read()
    if how == "magic":
        data = (1234).to_bytes(4, "big") + data[4:]
    elif how == "truncated":
        data = data[:-100]
    elif how == "header":
        data = data[:6]
    elif how == "size":
        data = data[:8] + (14).to_bytes(4, "big") + data[12:]
    with gzip.open(path, "wb") as file:
        file.write(data)


@pytest.mark.parametrize(
    "how, message",
    [
        ("magic", "magic number 0x000004d2, expected 0x00000803"),
        ("truncated", "announces"),
        ("header", "shorter than an idx header"),
        ("size", "14x28 images"),
        ("gzip", "truncated or corrupt"),
    ],
)
def test_corrupt_image_files_are_named(tmp_path, no_default_sources, how, message):
    _write_set(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    if how == "gzip":
        path.write_bytes(path.read_bytes()[:-20])  # cut inside the compressed stream
    else:
        _corrupt(path, how)
    with pytest.raises(ValueError, match=message) as info:
        fashion_mnist.load_fashion_mnist("test", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_corrupt_label_files_are_named(tmp_path, no_default_sources):
    _write_set(tmp_path, compress=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(_idx(2049, np.array([1, 2, 3, 12])))
    with pytest.raises(ValueError, match="label 12") as info:
        fashion_mnist.load_fashion_mnist("test", data_dir=tmp_path)
    assert str(path) in str(info.value)
    path.write_bytes(_idx(2049, np.array([1, 2, 3])))
    with pytest.raises(ValueError, match="has 4 images but .* has 3 labels"):
        fashion_mnist.load_fashion_mnist("test", data_dir=tmp_path)
    path.write_bytes(_idx(2051, np.zeros((4, 28, 28))))
    with pytest.raises(ValueError, match="expected 0x00000801"):
        fashion_mnist.load_fashion_mnist("test", data_dir=tmp_path)


def test_prepared_tfds_copy_is_read_in_official_order(tmp_path, monkeypatch, no_default_sources):
    """TFDS stores examples in hashed-key order; the loader must restore file order."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.image_classification import mnist

    arrays = _write_set(tmp_path / "raw", compress=False)
    monkeypatch.setattr(mnist, "_TRAIN_EXAMPLES", 6)
    monkeypatch.setattr(mnist, "_TEST_EXAMPLES", 4)
    monkeypatch.setattr(
        tfds.download.DownloadManager,
        "download_and_extract",
        lambda self, urls: {k: str(tmp_path / "raw" / os.path.basename(u)[:-3]) for k, u in urls.items()},
    )
    tfds.builder("fashion_mnist", data_dir=str(tmp_path / "tfds")).download_and_prepare()
    with pytest.warns(UserWarning, match="differs from the official release"):
        images, labels = fashion_mnist.load_fashion_mnist("train", tfds_data_dir=str(tmp_path / "tfds"))
    np.testing.assert_array_equal(images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels, arrays["train-labels-idx1-ubyte"])


def test_class_names_and_groups():
    assert fashion_mnist.NUM_CLASSES == len(fashion_mnist.SHORT_NAMES) == len(fashion_mnist.PLURAL_NAMES) == 10
    assert fashion_mnist.class_id("ankle boot") == fashion_mnist.class_id("Ankle boot") == 9
    assert fashion_mnist.group_class_ids("shoes") == (5, 7, 9)
    assert fashion_mnist.with_article("ankle boot") == "an ankle boot"
    assert fashion_mnist.with_article("t-shirt") == "a t-shirt"
    grouped = set().union(*fashion_mnist.GROUPS.values())
    assert grouped == set(fashion_mnist.SHORT_NAMES)
    with pytest.raises(ValueError, match="Unknown group"):
        fashion_mnist.group_class_ids("hats")
