"""VishwamImageConverter: raw images -> resized, normalised pixels for the SigLIP encoder.

The image half of the preprocessor; its output feeds `SigLIPVisionEncoder`.
"""

import math

import keras
import keras_hub
import numpy as np

from keras_hub.src.utils.tensor_utils import in_tf_function

from vishwam_keras.models.backbone import VishwamBackbone
from vishwam_keras.models.presets import NamedPresetMixin

# ITU-R BT.601 luma weights, for RGB -> grayscale when the encoder takes one channel.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _per_channel(name, value, num_channels):
    values = tuple(float(v) for v in np.ravel(value))
    if len(values) == 1:
        values = values * num_channels
    if len(values) != num_channels or not all(math.isfinite(v) for v in values):
        raise ValueError(
            f"`{name}` must be a finite float or {num_channels} finite floats "
            f"(one per channel). Received: {name}={value!r}"
        )
    return values


@keras.saving.register_keras_serializable(package="vishwam_keras")
class VishwamImageConverter(NamedPresetMixin, keras_hub.layers.ImageConverter):
    """Resizes images and normalises their pixels for the vision encoder.

    Steps: check the input; convert the channels to `num_channels` (grayscale is
    repeated to RGB; RGB becomes luma when `num_channels=1`); resize to `image_size`;
    rescale `value_range` to `[0, 1]`; normalise `(x - mean) / std`. With SigLIP's
    `mean = std = 0.5` the output lies in `[-1, 1]`. Inputs may have any size, be
    `uint8` or float, batched `(batch, height, width, channels)` or unbatched
    `(height, width, channels)`; the output is float32. Eager inputs are checked for
    NaN/Inf pixels (traced inputs cannot be).

    Args:
        image_size: int or `(height, width)`. Output size. Defaults to `224`.
        mean: float or one float per channel, on the `[0, 1]` scale. Defaults to `0.5`.
        std: float or one float per channel, positive. Defaults to `0.5`.
        num_channels: int, 1 or 3. Output channels. Defaults to `3`.
        value_range: `(low, high)`. Range of the input pixel values, whatever their
            dtype. Defaults to `(0, 255)`; pass `(0, 1)` for floats already in `[0, 1]`.
        interpolation: string. Resizing interpolation. Defaults to `"bilinear"`.
        crop_to_aspect_ratio: bool. Centre-crop to the target aspect ratio before
            resizing instead of stretching. Defaults to `False` (SigLIP stretches).
        antialias: bool. Antialias when downsampling. Defaults to `False`.

    Example:
    >>> converter = VishwamImageConverter(image_size=32)
    >>> images = np.random.randint(0, 256, size=(2, 50, 40, 3)).astype("uint8")
    >>> tuple(converter(images).shape)
    (2, 32, 32, 3)
    >>> tuple(converter(np.zeros((20, 20, 1), "uint8")).shape)  # grayscale, unbatched
    (32, 32, 3)
    """

    backbone_cls = VishwamBackbone  # lets `from_preset` find this class for our presets

    def __init__(
        self,
        image_size=224,
        mean=0.5,
        std=0.5,
        num_channels=3,
        value_range=(0, 255),
        interpolation="bilinear",
        crop_to_aspect_ratio=False,
        antialias=False,
        **kwargs,
    ):
        # Image preprocessing always runs in float32, as in KerasHub's Gemma3ImageConverter.
        kwargs.pop("dtype", None)
        # Derived from mean/std/value_range; present when a parent config is reloaded.
        kwargs.pop("scale", None)
        kwargs.pop("offset", None)
        image_size = self._standardize_image_size(image_size)
        if num_channels not in (1, 3) or isinstance(num_channels, bool):
            raise ValueError(
                f"`num_channels` must be 1 or 3. Received: num_channels={num_channels!r}"
            )
        mean = _per_channel("mean", mean, num_channels)
        std = _per_channel("std", std, num_channels)
        if not all(s > 0 for s in std):
            raise ValueError(f"`std` must be positive. Received: std={std!r}")
        low, high = self._standardize_value_range(value_range)
        # x01 = (x - low) / (high - low); out = (x01 - mean) / std = x * scale + offset.
        span = high - low
        scale = [1.0 / (span * s) for s in std]
        offset = [(-low / span - m) / s for m, s in zip(mean, std)]
        super().__init__(
            image_size=image_size,
            scale=scale,
            offset=offset,
            crop_to_aspect_ratio=crop_to_aspect_ratio,
            interpolation=interpolation,
            antialias=antialias,
            data_format="channels_last",
            dtype="float32",
            **kwargs,
        )
        self.mean = mean
        self.std = std
        self.num_channels = num_channels
        self.value_range = (low, high)

    @staticmethod
    def _standardize_image_size(image_size):
        if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
            image_size = (int(image_size), int(image_size))
        if (
            not isinstance(image_size, (tuple, list))
            or len(image_size) != 2
            or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                for v in image_size
            )
        ):
            raise ValueError(
                "`image_size` must be a positive int or a (height, width) pair of positive "
                f"ints. Received: image_size={image_size!r}"
            )
        return tuple(int(v) for v in image_size)

    @staticmethod
    def _standardize_value_range(value_range):
        try:
            low, high = (float(v) for v in value_range)
        except (TypeError, ValueError):
            low, high = math.nan, math.nan
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(
                "`value_range` must be a pair (low, high) of finite numbers with low < high. "
                f"Received: value_range={value_range!r}"
            )
        return low, high

    def _check_images(self, images):
        if isinstance(images, (str, bytes)) or not hasattr(images, "shape"):
            raise TypeError(
                "`images` must be an array or tensor of pixel values, not a "
                f"{type(images).__name__}. Decode image files first (e.g. with PIL or "
                f"`tf.io.decode_image`). Received: images={images!r:.80}"
            )
        try:
            dtype = keras.backend.standardize_dtype(images.dtype)
        except ValueError:  # strings, objects: not a Keras dtype at all
            dtype = str(images.dtype)
        if dtype == "bool" or not (dtype.startswith(("int", "uint", "float", "bfloat"))):
            raise TypeError(
                "`images` must hold integer or float pixel values. "
                f"Received: images.dtype={dtype}"
            )
        shape = tuple(images.shape)
        if len(shape) not in (3, 4):
            raise ValueError(
                "`images` must have rank 3 (height, width, channels) or rank 4 "
                f"(batch, height, width, channels). Received: images.shape={shape}"
            )
        if shape[-1] is not None and shape[-1] not in (1, 3):
            raise ValueError(
                "`images` must have 1 (grayscale) or 3 (RGB) channels in the last axis. "
                f"Received: images.shape={shape}"
            )
        if any(d == 0 for d in shape[-3:-1]):
            raise ValueError(
                "`images` must have a height and width of at least one pixel. "
                f"Received: images.shape={shape}"
            )
        self._check_finite(images)

    @staticmethod
    def _check_finite(images):
        """NaN/Inf check for concrete float inputs; traced tensors are skipped."""
        if in_tf_function():
            return
        dtype = np.dtype(keras.backend.standardize_dtype(images.dtype))
        if not np.issubdtype(dtype, np.floating):
            return
        try:
            values = np.asarray(keras.ops.convert_to_numpy(images))
        except Exception:  # A tracer (jit) has no value to check.
            return
        if not np.all(np.isfinite(values)):
            raise ValueError(
                "`images` contains NaN or Inf pixel values "
                f"({int(np.sum(~np.isfinite(values)))} of {values.size})."
            )

    def _convert_channels(self, images):
        """1 <-> 3 channels, with operators and NumPy constants so it runs in tf.data too."""
        channels = images.shape[-1]
        if channels is None or channels == self.num_channels:
            return images
        if self.num_channels == 3:
            images, ones = self._convert_types(images, np.ones((3,)), "float32")
            return images * ones
        red, green, blue = _LUMA_WEIGHTS
        return (
            images[..., 0:1] * red + images[..., 1:2] * green + images[..., 2:3] * blue
        )

    def _call_python(self, inputs):
        if isinstance(inputs, (list, tuple)):
            try:
                inputs = np.asarray(inputs)
            except ValueError as error:  # ragged nesting
                raise ValueError(
                    "`images` given as a list must stack into one array; pass images of one "
                    f"size, or convert them one by one. ({error})"
                ) from None
        if isinstance(inputs, dict):
            raise ValueError(
                "`VishwamImageConverter` takes an image tensor, not a dict. "
                f"Received keys: {sorted(inputs)}"
            )
        self._check_images(inputs)
        # Resize in float32: `keras.layers.Resizing` keeps integer dtypes and would round
        # the interpolated uint8 pixels.
        images, _ = self._convert_types(inputs, np.ones((1,)), "float32")
        return super()._call_python(self._convert_channels(images))

    def get_config(self):
        config = super().get_config()
        for derived in ("scale", "offset"):
            config.pop(derived, None)
        config.update(
            {
                "mean": list(self.mean),
                "std": list(self.std),
                "num_channels": self.num_channels,
                "value_range": list(self.value_range),
            }
        )
        return config
