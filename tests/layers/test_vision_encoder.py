import keras
import numpy as np
import pytest

from numpy_reference import attention, rms_norm
from vishwam_keras.layers.vision_encoder import SigLIPVisionEncoder

SMALL = dict(
    image_size=8, patch_size=2, hidden_dim=16, num_layers=2, num_heads=2,
    intermediate_dim=24, output_dim=12,
)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def _randomise(layer, scale=0.3):
    """Random values for every weight (biases, norms and probes included)."""
    rng = np.random.default_rng(1)
    for weight in layer.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32") * scale)


def _images(*batch):
    return np.random.randn(*batch, 8, 8, 3).astype("float32")


# --- An independent NumPy SigLIP (weights read from the layer) -------------------------


def _layer_norm(x, norm, epsilon):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * _np(norm.gamma) + _np(norm.beta)


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _mlp(x, mlp):
    hidden = _gelu(x @ _np(mlp.fc1.kernel) + _np(mlp.fc1.bias))
    return hidden @ _np(mlp.fc2.kernel) + _np(mlp.fc2.bias)


def _mha(queries, keys_values, layer):
    def project(x, dense):
        return np.einsum("btd,dnh->btnh", x, _np(dense.kernel)) + _np(dense.bias)

    out = attention(
        project(queries, layer.query_dense),
        project(keys_values, layer.key_dense),
        project(keys_values, layer.value_dense),
        causal=False,
    )
    return np.einsum("btnh,nhd->btd", out, _np(layer.output_dense.kernel)) + _np(
        layer.output_dense.bias
    )


def _numpy_patches(encoder, images):
    p, g = encoder.patch_size, encoder.grid_size
    batch = images.shape[0]
    patches = images.reshape(batch, g, p, g, p, -1).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(batch, g * g, -1)
    kernel = _np(encoder.patch_embedding.kernel).reshape(-1, encoder.hidden_dim)
    x = patches @ kernel + _np(encoder.patch_embedding.bias)
    x = x + _np(encoder.position_embedding)
    eps = encoder.layer_norm_epsilon
    for block in encoder.blocks:
        y = _layer_norm(x, block.attention_norm, eps)
        x = x + _mha(y, y, block.attention)
        x = x + _mlp(_layer_norm(x, block.mlp_norm, eps), block.mlp)
    return _layer_norm(x, encoder.encoder_norm, eps)


def _numpy_map_head(encoder, tokens):
    head = encoder.map_head
    probes = np.broadcast_to(_np(head.probe), (tokens.shape[0],) + head.probe.shape[1:])
    x = _mha(probes, tokens, head.attention)
    return x + _mlp(_layer_norm(x, head.mlp_norm, encoder.layer_norm_epsilon), head.mlp)


def _numpy_avg_pool(encoder, tokens):
    g, side = encoder.grid_size, int(np.sqrt(encoder.num_pooled_tokens))
    grid = tokens.reshape(tokens.shape[0], g, g, -1)
    w = g // side
    out = np.zeros((tokens.shape[0], side, side, tokens.shape[-1]))
    for i in range(side):
        for j in range(side):
            out[:, i, j] = grid[:, i * w : (i + 1) * w, j * w : (j + 1) * w].mean(axis=(1, 2))
    return out.reshape(tokens.shape[0], side * side, -1)


def _numpy_encoder(encoder, images):
    tokens = _numpy_patches(encoder, np.asarray(images, np.float64))
    if encoder.pooling == "map":
        tokens = _numpy_map_head(encoder, tokens)
    elif encoder.pooling == "avg":
        tokens = _numpy_avg_pool(encoder, tokens)
    tokens = rms_norm(tokens, _np(encoder.projection_norm.scale))
    return tokens @ _np(encoder.projection.kernel)


# --- Tests ------------------------------------------------------------------------------


# Shapes repeat across tests on purpose (batch 2 after folding, 1 or 4 pooled tokens):
# JAX compiles each eager op once per shape, and that dominates the run time on CPU.


@pytest.mark.parametrize("pooling,num_pooled", [("map", 1), ("map", 4), ("avg", 4), (None, 1)])
def test_matches_numpy_reference(pooling, num_pooled):
    encoder = SigLIPVisionEncoder(**SMALL, pooling=pooling, num_pooled_tokens=num_pooled)
    encoder.build((None, 8, 8, 3))
    _randomise(encoder)
    images = _images(2)
    out = _np(encoder(images))
    np.testing.assert_allclose(out, _numpy_encoder(encoder, images), atol=2e-4, rtol=1e-3)


def test_map_head_matches_numpy_on_patch_tokens():
    encoder = SigLIPVisionEncoder(**SMALL, pooling="map", num_pooled_tokens=4)
    encoder.build((None, 8, 8, 3))
    _randomise(encoder)
    tokens = np.random.randn(2, encoder.num_patches, 16).astype("float32")
    np.testing.assert_allclose(
        _np(encoder.pool(tokens)), _numpy_map_head(encoder, tokens.astype(np.float64)),
        atol=1e-4, rtol=1e-4,
    )


def test_call_is_encode_pool_project():
    encoder = SigLIPVisionEncoder(**SMALL, pooling="avg", num_pooled_tokens=4)
    images = _images(2)
    patches = encoder.encode_patches(images)
    assert tuple(patches.shape) == (2, 16, 16)
    pooled = encoder.pool(patches)
    assert tuple(pooled.shape) == (2, 4, 16)
    np.testing.assert_allclose(_np(encoder.project(pooled)), _np(encoder(images)), atol=1e-6)


@pytest.mark.parametrize(
    "pooling,num_pooled,expected_tokens",
    [("map", 1, 1), ("map", 4, 4), ("avg", 1, 1), ("avg", 4, 4), ("avg", 16, 16), (None, 7, 16)],
)
def test_output_shapes_rank_4_and_5(pooling, num_pooled, expected_tokens):
    encoder = SigLIPVisionEncoder(**SMALL, pooling=pooling, num_pooled_tokens=num_pooled)
    assert encoder.num_output_tokens == expected_tokens
    images = _images(1, 2)
    folded = _np(encoder(images))
    assert folded.shape == (1, 2, expected_tokens, 12)
    assert encoder.compute_output_shape((None, 3, 8, 8, 3)) == (None, 3, expected_tokens, 12)
    assert encoder.compute_output_shape((None, 8, 8, 3)) == (None, expected_tokens, 12)
    # Folding is per image: the same images as a rank-4 batch give the same tokens.
    np.testing.assert_allclose(folded[0], _np(encoder(images[0])), atol=1e-5)
    assert tuple(encoder.encode_patches(images).shape) == (1, 2, 16, 16)


def test_symbolic_call_in_functional_model():
    encoder = SigLIPVisionEncoder(**SMALL, pooling="map", num_pooled_tokens=4)
    inputs = keras.Input((2, 8, 8, 3))
    model = keras.Model(inputs, encoder(inputs))
    assert tuple(model.output.shape) == (None, 2, 4, 12)


def test_config_round_trip_and_weights():
    encoder = SigLIPVisionEncoder(
        **SMALL, pooling="avg", num_pooled_tokens=4, num_channels=1,
        layer_norm_epsilon=1e-5, dropout=0.1, name="vision",
    )
    images = np.random.randn(2, 8, 8, 1).astype("float32")
    out = _np(encoder(images))
    config = encoder.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(encoder))
    assert restored.get_config() == config
    assert restored.built  # build_config travels with the serialised layer
    restored.set_weights(encoder.get_weights())
    np.testing.assert_allclose(_np(restored(images)), out, atol=1e-6)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(patch_size=3), "patch_size"),
        (dict(pooling="avg", num_pooled_tokens=3), "num_pooled_tokens"),
        (dict(pooling="avg", num_pooled_tokens=9), "num_pooled_tokens"),
        (dict(pooling="max"), "pooling"),
        (dict(num_heads=3), "num_heads"),
        (dict(pooling="map", num_pooled_tokens=0), "num_pooled_tokens"),
        (dict(output_dim=-1), "output_dim"),
    ],
)
def test_bad_arguments(overrides, match):
    with pytest.raises(ValueError, match=match):
        SigLIPVisionEncoder(**{**SMALL, **overrides})


def test_bad_image_shape():
    encoder = SigLIPVisionEncoder(**SMALL)
    with pytest.raises(ValueError, match="images"):
        encoder(np.zeros((2, 9, 8, 3), "float32"))
    with pytest.raises(ValueError, match="images"):
        encoder(np.zeros((8, 8, 3), "float32"))
