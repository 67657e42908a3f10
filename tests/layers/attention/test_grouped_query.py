import keras
import numpy as np
import pytest

from numpy_reference import attention, project_qkv
from vishwam_keras import GroupedQueryAttention
from vishwam_keras.layers import kv_cache


def _numpy_forward(layer, x, padding_mask=None):
    q, k, v, wo = project_qkv(layer, x)
    out = attention(
        q, k, v, window=layer.sliding_window_size, soft_cap=layer.logit_soft_cap,
        padding_mask=padding_mask, scale=layer.scale,
    )
    return np.einsum("btnh,nhd->btd", out, wo)


def _randomise_norms(layer):
    if layer.use_query_key_norm:
        layer.query_norm.scale.assign(np.random.randn(layer.head_dim).astype("float32") * 0.3)
        layer.key_norm.scale.assign(np.random.randn(layer.head_dim).astype("float32") * 0.3)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2), (8, 2), (4, 1)])
@pytest.mark.parametrize("window", [None, 3, 50])
@pytest.mark.parametrize("soft_cap", [None, 5.0])
def test_matches_numpy_reference(num_heads, num_kv_heads, window, soft_cap):
    x = np.random.randn(2, 9, 16).astype("float32")
    padding_mask = np.ones((2, 9), "int32")
    padding_mask[1, 6:] = 0
    layer = GroupedQueryAttention(
        hidden_dim=16, num_query_heads=num_heads, num_key_value_heads=num_kv_heads,
        head_dim=8, sliding_window_size=window, logit_soft_cap=soft_cap,
        rope_max_wavelength=1000, rope_scaling_factor=2.0,
    )
    layer.build(x.shape)
    _randomise_norms(layer)
    out = keras.ops.convert_to_numpy(layer(x, padding_mask=padding_mask))
    expected = _numpy_forward(layer, x, padding_mask)
    # Padded query rows are don't-care; compare real tokens.
    real = padding_mask.astype(bool)
    np.testing.assert_allclose(out[real], expected[real], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("window", [None, 4])
def test_cached_decoding_equals_full_pass(window):
    length, prefill = 11, 3
    x = np.random.randn(2, length, 16).astype("float32")
    layer = GroupedQueryAttention(16, 4, 2, 8, sliding_window_size=window)
    full = keras.ops.convert_to_numpy(layer(x))
    size = kv_cache.cache_length(window, length)
    cache = kv_cache.empty_cache(2, size, 2, 8, "float32")
    out, cache = layer(x[:, :prefill], cache=cache, cache_update_index=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), full[:, :prefill], atol=1e-5)
    for t in range(prefill, length):
        out, cache = layer(x[:, t : t + 1], cache=cache, cache_update_index=t)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(out)[:, 0], full[:, t], atol=1e-5)


def test_prefill_longer_than_window_wraps_ring_buffer():
    x = np.random.randn(1, 10, 16).astype("float32")
    layer = GroupedQueryAttention(16, 2, 1, 8, sliding_window_size=3)
    full = keras.ops.convert_to_numpy(layer(x))
    cache = kv_cache.empty_cache(1, 3, 1, 8, "float32")
    _, cache = layer(x[:, :7], cache=cache, cache_update_index=0)
    assert tuple(cache[0].shape) == (1, 3, 1, 8)
    for t in range(7, 10):
        out, cache = layer(x[:, t : t + 1], cache=cache, cache_update_index=t)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(out)[:, 0], full[:, t], atol=1e-5)


def test_symbolic_shapes_and_config_round_trip():
    layer = GroupedQueryAttention(16, 4, 2, 8, sliding_window_size=5, logit_soft_cap=20.0)
    symbolic = keras.Input((None, 16))
    assert tuple(layer(symbolic).shape) == (None, None, 16)
    clone = GroupedQueryAttention.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_query_heads=4, num_key_value_heads=3), "num_key_value_heads must divide|must divide"),
        (dict(num_query_heads=0, num_key_value_heads=1), "num_query_heads"),
        (dict(num_query_heads=4, num_key_value_heads=2, sliding_window_size=0), "sliding_window_size"),
        (dict(num_query_heads=4, num_key_value_heads=2, head_dim=7), "head_dim"),
        (dict(num_query_heads=4, num_key_value_heads=2, logit_soft_cap=-1.0), "logit_soft_cap"),
    ],
)
def test_bad_arguments(kwargs, match):
    kwargs = {"hidden_dim": 16, "head_dim": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        GroupedQueryAttention(**kwargs)
