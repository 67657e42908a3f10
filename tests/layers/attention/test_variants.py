import keras
import numpy as np
import pytest

from numpy_reference import masked_attention, project_qkv
from vishwam_keras.layers import kv_cache
from vishwam_keras.layers.attention.factory import create_attention_layer
from vishwam_keras.layers.attention.grouped_query import (
    AttentionType,
    FlashAttention2,
    GroupedQueryAttention,
    SlidingWindowAttention,
)
from vishwam_keras.layers.attention.multi_scale import MultiScaleAttention
from vishwam_keras.layers.attention.sparse import SparseAttention, kept_blocks


def _causal(length, window=None):
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= i - j < window
    return allowed


def _run(layer, x):
    return keras.ops.convert_to_numpy(layer(x))


def test_flash_attention_matches_grouped_query_attention_with_same_weights():
    x = np.random.randn(2, 11, 32).astype("float32")
    flash = FlashAttention2(embed_dim=32, num_heads=4, num_kv_heads=2, attn_logits_soft_cap=20.0,
                            attn_type=AttentionType.LOCAL_SLIDING, window_size=3)
    plain = GroupedQueryAttention(32, 4, 2, 8, logit_soft_cap=20.0, sliding_window_size=3,
                                  attention_implementation="xla")
    flash.build(x.shape)
    plain.build(x.shape)
    plain.set_weights(flash.get_weights())
    np.testing.assert_allclose(_run(flash, x), _run(plain, x), atol=2e-5)


def test_sliding_window_attention_against_numpy():
    x = np.random.randn(1, 12, 32).astype("float32")
    layer = SlidingWindowAttention(embed_dim=32, num_heads=4, window_size=4)
    out = _run(layer, x)
    q, k, v, wo = project_qkv(layer, x)
    expected = np.einsum("btnh,nhd->btd", masked_attention(q, k, v, _causal(12, 4), layer.scale), wo)
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_multi_scale_heads_use_their_own_windows():
    x = np.random.randn(2, 10, 32).astype("float32")
    layer = MultiScaleAttention(embed_dim=32, num_heads=4, num_kv_heads=2, window_sizes=[2, -1])
    out = _run(layer, x)
    q, k, v, wo = project_qkv(layer, x)
    local = masked_attention(q[:, :, :2], k[:, :, :1], v[:, :, :1], _causal(10, 2), layer.scale)
    global_ = masked_attention(q[:, :, 2:], k[:, :, 1:], v[:, :, 1:], _causal(10), layer.scale)
    expected = np.einsum("btnh,nhd->btd", np.concatenate([local, global_], axis=2), wo)
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_sparse_attention_against_dense_block_mask():
    length, block = 20, 4
    x = np.random.randn(1, length, 32).astype("float32")
    layer = SparseAttention(embed_dim=32, num_heads=4, block_size=block, num_local_blocks=2,
                            num_global_blocks=1, stride=3)
    out = _run(layer, x)
    allowed = _causal(length)
    for i in range(length):
        keep = kept_blocks(i // block, 2, 1, 3)
        allowed[i] &= np.isin(np.arange(length) // block, keep)
    q, k, v, wo = project_qkv(layer, x)
    expected = np.einsum("btnh,nhd->btd", masked_attention(q, k, v, allowed, layer.scale), wo)
    np.testing.assert_allclose(out, expected, atol=2e-5)
    # Cost grows with kept blocks: query block 4 sees blocks {0, 2, 3, 4}, not all five.
    assert kept_blocks(4, 2, 1, 3) == [0, 2, 3, 4]


@pytest.mark.parametrize(
    "layer",
    [
        lambda: MultiScaleAttention(embed_dim=32, num_heads=4, window_sizes=[3, -1]),
        lambda: SparseAttention(embed_dim=32, num_heads=4, block_size=3, stride=2),
    ],
)
def test_cached_decoding_equals_full_pass(layer):
    layer = layer()
    x = np.random.randn(1, 12, 32).astype("float32")
    full = _run(layer, x)
    cache = kv_cache.empty_cache(1, 12, layer.num_key_value_heads, layer.head_dim, "float32")
    _, cache = layer(x[:, :5], cache=cache, cache_update_index=0)
    for t in range(5, 12):
        out, cache = layer(x[:, t : t + 1], cache=cache, cache_update_index=t)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(out)[:, 0], full[:, t], atol=2e-5)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("gqa", dict(embed_dim=32, num_heads=4, num_kv_heads=1)),
        ("flash", dict(embed_dim=32, num_heads=4)),
        ("sliding", dict(embed_dim=32, num_heads=4, window_size=5)),
        ("multi_scale", dict(embed_dim=32, num_heads=4, window_sizes=[2, 4, 8, -1])),
        ("sparse", dict(embed_dim=32, num_heads=4, block_size=4)),
    ],
)
def test_factory_builds_every_type_and_configs_round_trip(name, kwargs):
    layer = create_attention_layer(attention_type=name, **kwargs)
    assert tuple(layer(np.ones((1, 9, 32), "float32")).shape) == (1, 9, 32)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: create_attention_layer("linear", embed_dim=32, num_heads=4), "attention_type"),
        (lambda: MultiScaleAttention(embed_dim=32, num_heads=4, window_sizes=[2, 4, 8]), "window"),
        (lambda: MultiScaleAttention(embed_dim=32, num_heads=4, window_sizes=[0, -1]), "window_sizes"),
        (lambda: SparseAttention(embed_dim=32, num_heads=4, block_size=0), "block_size"),
        (lambda: FlashAttention2(embed_dim=32, num_heads=4, attn_type="diagonal"), "attn_type"),
        (lambda: FlashAttention2(embed_dim=32, num_heads=4, attn_type=AttentionType.LOCAL_SLIDING), "window_size"),
        (lambda: FlashAttention2(embed_dim=30, num_heads=4), "embed_dim"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()
