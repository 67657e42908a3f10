import keras
import numpy as np
import pytest

from vishwam_keras.models.image_converter import VishwamImageConverter


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def _numpy_normalise(images, mean, std, low=0.0, high=255.0):
    unit = (np.asarray(images, np.float64) - low) / (high - low)
    return (unit - np.asarray(mean)) / np.asarray(std)


def test_siglip_normalisation_to_minus_one_one():
    images = np.random.randint(0, 256, size=(2, 6, 6, 3)).astype("uint8")
    images[0, 0, 0] = (0, 128, 255)
    converter = VishwamImageConverter(image_size=6)  # same size: no resampling
    out = converter(images)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(_np(out), _numpy_normalise(images, 0.5, 0.5), atol=1e-5)
    np.testing.assert_allclose(_np(out)[0, 0, 0], [-1.0, 128 / 127.5 - 1, 1.0], atol=1e-5)


def test_per_channel_mean_std_and_value_range():
    mean, std = (0.48, 0.45, 0.40), (0.27, 0.26, 0.28)
    images = np.random.rand(2, 5, 5, 3).astype("float32")
    converter = VishwamImageConverter(image_size=5, mean=mean, std=std, value_range=(0, 1))
    np.testing.assert_allclose(
        _np(converter(images)), _numpy_normalise(images, mean, std, 0.0, 1.0), atol=1e-5
    )


def test_uint8_and_float_inputs_agree_and_any_size_is_resized():
    images = np.random.randint(0, 256, size=(2, 13, 7, 3)).astype("uint8")
    converter = VishwamImageConverter(image_size=(8, 10))
    from_uint8 = _np(converter(images))
    assert from_uint8.shape == (2, 8, 10, 3)
    np.testing.assert_allclose(_np(converter(images.astype("float32"))), from_uint8, atol=1e-5)
    assert np.all(from_uint8 >= -1.0 - 1e-5) and np.all(from_uint8 <= 1.0 + 1e-5)
    # Unbatched input.
    assert tuple(converter(images[0]).shape) == (8, 10, 3)


def test_grayscale_is_repeated_to_three_channels():
    gray = np.random.randint(0, 256, size=(2, 6, 6, 1)).astype("uint8")
    converter = VishwamImageConverter(image_size=6)
    out = _np(converter(gray))
    assert out.shape == (2, 6, 6, 3)
    np.testing.assert_allclose(out, _numpy_normalise(np.repeat(gray, 3, -1), 0.5, 0.5), atol=1e-5)


def test_single_channel_converter_takes_grayscale_and_rgb():
    converter = VishwamImageConverter(image_size=4, num_channels=1)
    gray = np.random.randint(0, 256, size=(2, 4, 4, 1)).astype("uint8")
    np.testing.assert_allclose(_np(converter(gray)), _numpy_normalise(gray, 0.5, 0.5), atol=1e-5)
    rgb = np.random.randint(0, 256, size=(2, 4, 4, 3)).astype("uint8")
    luma = (rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None]
    out = _np(converter(rgb))
    assert out.shape == (2, 4, 4, 1)
    np.testing.assert_allclose(out, _numpy_normalise(luma, 0.5, 0.5), atol=1e-4)


def test_runs_in_tf_data():
    tf = pytest.importorskip("tensorflow")
    images = np.random.randint(0, 256, size=(4, 9, 9, 1)).astype("uint8")
    converter = VishwamImageConverter(image_size=6)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(2).map(converter)
    batch = next(iter(dataset))
    assert tuple(batch.shape) == (2, 6, 6, 3)
    np.testing.assert_allclose(np.asarray(batch), _np(converter(images[:2])), atol=1e-5)


def test_config_round_trip():
    converter = VishwamImageConverter(
        image_size=(8, 6), mean=(0.1, 0.2, 0.3), std=0.25, value_range=(0, 1),
        interpolation="nearest", crop_to_aspect_ratio=True,
    )
    config = converter.get_config()
    assert "scale" not in config and "offset" not in config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(converter)
    )
    assert restored.get_config() == config
    images = np.random.rand(2, 11, 9, 3).astype("float32")
    np.testing.assert_allclose(_np(restored(images)), _np(converter(images)), atol=1e-6)


@pytest.mark.parametrize(
    "images,match",
    [
        (np.zeros((4, 4), "uint8"), "rank"),
        (np.zeros((1, 1, 4, 4, 3), "uint8"), "rank"),
        (np.zeros((1, 4, 4, 2), "uint8"), "channels"),
        (np.zeros((1, 4, 4, 4), "float32"), "channels"),
        (np.full((1, 4, 4, 3), np.nan, "float32"), "NaN or Inf"),
        (np.array([[[[0.0, np.inf, 0.0]]]], "float32"), "NaN or Inf"),
    ],
)
def test_bad_images(images, match):
    converter = VishwamImageConverter(image_size=4)
    with pytest.raises(ValueError, match=match):
        converter(images)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_channels=2), "num_channels"),
        (dict(mean=(0.5, 0.5)), "mean"),
        (dict(std=0.0), "std"),
        (dict(std=(0.5, -1.0, 0.5)), "std"),
        (dict(value_range=(1, 0)), "value_range"),
        (dict(image_size=0), "image_size"),
        (dict(image_size=(4, 4, 4)), "image_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VishwamImageConverter(**kwargs)
