import keras
import numpy as np
import pytest

from numpy_reference import rms_norm, rope
from vishwam_keras import GatedFeedForward, RMSNorm, RotaryEmbedding


def test_rms_norm_matches_numpy_and_starts_as_identity_scale():
    x = np.random.randn(2, 5, 16).astype("float32")
    norm = RMSNorm()
    out = keras.ops.convert_to_numpy(norm(x))
    np.testing.assert_allclose(out, rms_norm(x, 0.0), atol=1e-5)
    scale = np.random.randn(16).astype("float32")
    norm.scale.assign(scale)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm(x)), rms_norm(x, scale), atol=1e-4)


def test_rms_norm_computes_in_float32_under_bfloat16():
    x = (np.random.randn(2, 3, 8) * 100).astype("float32")
    norm = RMSNorm(dtype="mixed_bfloat16")
    out = norm(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")), rms_norm(x, 0.0), rtol=2e-2
    )


@pytest.mark.parametrize("wavelength,scaling", [(10_000, 1.0), (1_000_000, 8.0)])
def test_rope_matches_numpy(wavelength, scaling):
    x = np.random.randn(2, 7, 3, 8).astype("float32")
    layer = RotaryEmbedding(max_wavelength=wavelength, scaling_factor=scaling)
    out = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(out, rope(x, np.arange(7), wavelength, scaling), atol=1e-5)
    shifted = keras.ops.convert_to_numpy(layer(x, start_index=5))
    np.testing.assert_allclose(shifted, rope(x, np.arange(5, 12), wavelength, scaling), atol=1e-4)


def test_rope_preserves_relative_dot_products():
    q = np.random.randn(1, 1, 1, 8).astype("float32")
    k = np.random.randn(1, 1, 1, 8).astype("float32")
    layer = RotaryEmbedding()

    def dot(i, j):
        qi = keras.ops.convert_to_numpy(layer(q, positions=np.array([i])))
        kj = keras.ops.convert_to_numpy(layer(k, positions=np.array([j])))
        return float((qi * kj).sum())

    np.testing.assert_allclose(dot(3, 1), dot(10, 8), rtol=1e-4)


@pytest.mark.parametrize(
    "layer_fn,match",
    [
        (lambda: RMSNorm(epsilon=0), "epsilon"),
        (lambda: RotaryEmbedding(scaling_factor=0.5), "scaling_factor"),
        (lambda: RotaryEmbedding(max_wavelength=-1), "max_wavelength"),
        (lambda: GatedFeedForward(hidden_dim=0, intermediate_dim=4), "hidden_dim"),
    ],
)
def test_bad_arguments(layer_fn, match):
    with pytest.raises(ValueError, match=match):
        layer_fn()


@pytest.mark.parametrize("layer", [RMSNorm(epsilon=1e-5), RotaryEmbedding(123, 2.0), GatedFeedForward(8, 16)])
def test_config_round_trip(layer):
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
