import keras
import numpy as np
import pytest

from numpy_reference import attention, rms_norm
from vishwam_keras.layers.attention.cross_modal import CrossModalAttention


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def _numpy_direction(direction, queries, keys_values, key_mask):
    q = np.einsum("btd,dnh->btnh", queries, _np(direction.query_dense.kernel))
    k = np.einsum("btd,dnh->btnh", keys_values, _np(direction.key_dense.kernel))
    v = np.einsum("btd,dnh->btnh", keys_values, _np(direction.value_dense.kernel))
    if direction.use_query_key_norm:
        q = rms_norm(q, _np(direction.query_norm.scale))
        k = rms_norm(k, _np(direction.key_norm.scale))
    out = attention(q, k, v, causal=False, padding_mask=key_mask)
    return np.einsum("btnh,nhd->btd", out, _np(direction.output_dense.kernel))


def _randomise_norms(layer):
    for weight in layer.weights:
        if "norm" in weight.path:
            weight.assign(np.random.randn(*weight.shape).astype("float32") * 0.3)


def _inputs(text_len=5, vision_len=4, text_dim=16, vision_dim=12):
    text = np.random.randn(2, text_len, text_dim).astype("float32")
    vision = np.random.randn(2, vision_len, vision_dim).astype("float32")
    vision_mask = np.array([[1, 1, 1, 0], [1, 0, 1, 1]], bool)[:, :vision_len]
    return text, vision, vision_mask


@pytest.mark.parametrize("num_kv_heads", [None, 2, 1])
@pytest.mark.parametrize("use_qk_norm", [True, False])
def test_text_to_vision_matches_numpy(num_kv_heads, use_qk_norm):
    text, vision, vision_mask = _inputs()
    layer = CrossModalAttention(
        hidden_dim=16, num_heads=4, head_dim=8, num_key_value_heads=num_kv_heads,
        vision_dim=12, use_query_key_norm=use_qk_norm,
    )
    layer.build(text.shape, vision.shape)
    _randomise_norms(layer)
    out = _np(layer(text, vision, vision_mask=vision_mask))
    expected = _numpy_direction(layer.text_to_vision, text, vision, vision_mask)
    np.testing.assert_allclose(out, expected, atol=2e-5, rtol=1e-4)
    # Without a mask every vision token is visible.
    unmasked = _np(layer(text, vision))
    expected = _numpy_direction(layer.text_to_vision, text, vision, None)
    np.testing.assert_allclose(unmasked, expected, atol=2e-5, rtol=1e-4)


def test_masked_vision_tokens_do_not_matter():
    text, vision, vision_mask = _inputs()
    layer = CrossModalAttention(hidden_dim=16, num_heads=4, head_dim=8, vision_dim=12)
    out = _np(layer(text, vision, vision_mask=vision_mask))
    changed = vision.copy()
    changed[~vision_mask] = 1e3
    np.testing.assert_allclose(_np(layer(text, changed, vision_mask=vision_mask)), out, atol=1e-6)


def test_bidirectional_matches_numpy():
    text, vision, vision_mask = _inputs()
    text_padding_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    layer = CrossModalAttention(
        hidden_dim=16, num_heads=4, head_dim=8, num_key_value_heads=2, vision_dim=12,
        bidirectional=True,
    )
    layer.build(text.shape, vision.shape)
    _randomise_norms(layer)
    text_update, vision_update = layer(
        text, vision, vision_mask=vision_mask, text_padding_mask=text_padding_mask
    )
    assert tuple(text_update.shape) == (2, 5, 16)
    assert tuple(vision_update.shape) == (2, 4, 12)
    np.testing.assert_allclose(
        _np(text_update), _numpy_direction(layer.text_to_vision, text, vision, vision_mask),
        atol=2e-5, rtol=1e-4,
    )
    expected = _numpy_direction(layer.vision_to_text, vision, text, text_padding_mask)
    expected[~vision_mask] = 0.0  # padded vision tokens get no update
    np.testing.assert_allclose(_np(vision_update), expected, atol=2e-5, rtol=1e-4)
    assert layer.compute_output_shape((2, 5, 16), (2, 4, 12)) == ((2, 5, 16), (2, 4, 12))


def test_row_without_vision_gets_exactly_zero_and_finite_gradients():
    text, vision, _ = _inputs()
    vision_mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    layer = CrossModalAttention(
        hidden_dim=16, num_heads=4, head_dim=8, vision_dim=12, bidirectional=True
    )
    text_update, vision_update = layer(
        text, vision, vision_mask=vision_mask, text_padding_mask=np.zeros((2, 5), bool)
    )
    text_update, vision_update = _np(text_update), _np(vision_update)
    assert np.all(text_update[1] == 0.0) and np.all(np.isfinite(text_update))
    assert np.any(text_update[0] != 0.0)
    assert np.all(vision_update == 0.0)  # no valid text anywhere

    # One SGD step through the empty row keeps every weight finite.
    text_in, vision_in = keras.Input((5, 16)), keras.Input((4, 12))
    mask_in = keras.Input((4,), dtype="bool")
    single = CrossModalAttention(hidden_dim=16, num_heads=4, head_dim=8, vision_dim=12)
    model = keras.Model([text_in, vision_in, mask_in], single(text_in, vision_in, mask_in))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch([text, vision, vision_mask], np.ones((2, 5, 16), "float32"))
    assert all(np.all(np.isfinite(_np(w))) for w in model.weights)


def test_symbolic_shapes_and_config_round_trip():
    layer = CrossModalAttention(
        hidden_dim=16, num_heads=4, head_dim=8, num_key_value_heads=2, vision_dim=12,
        bidirectional=True, use_query_key_norm=False,
    )
    text_in, vision_in = keras.Input((None, 16)), keras.Input((None, 12))
    text_update, vision_update = layer(text_in, vision_in)
    assert tuple(text_update.shape) == (None, None, 16)
    assert tuple(vision_update.shape) == (None, None, 12)
    text, vision, vision_mask = _inputs()
    out = _np(layer(text, vision, vision_mask)[0])
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert restored.get_config() == layer.get_config()
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(_np(restored(text, vision, vision_mask)[0]), out, atol=1e-6)
    with_initializer = CrossModalAttention(16, 4, 8, kernel_initializer="glorot_uniform")
    config = with_initializer.get_config()
    assert CrossModalAttention.from_config(config).get_config() == config


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(head_dim=0), "head_dim"),
        (dict(vision_dim=-2), "vision_dim"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrossModalAttention(**{"hidden_dim": 16, "num_heads": 4, "head_dim": 8, **kwargs})


def test_bad_inputs():
    text, vision, vision_mask = _inputs()
    layer = CrossModalAttention(hidden_dim=16, num_heads=4, head_dim=8, vision_dim=12)
    with pytest.raises(ValueError, match="vision"):
        layer(text, np.zeros((2, 4, 16), "float32"))
    with pytest.raises(ValueError, match="vision_mask"):
        layer(text, vision, vision_mask=np.ones((2, 3), bool))
