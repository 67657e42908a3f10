"""`create_attention_layer(attention_type, **kwargs)`: every attention layer by name.

Accepts the seed's argument names (`embed_dim`, `num_heads`, `num_kv_heads`, ...).
"""

from vishwam_keras.layers.attention.grouped_query import (
    AttentionType,
    FlashAttention2,
    GroupedQueryAttention,
    SlidingWindowAttention,
    _seed_kwargs,
)
from vishwam_keras.layers.attention.multi_scale import MultiScaleAttention
from vishwam_keras.layers.attention.sparse import SparseAttention


def _gqa(embed_dim=None, num_heads=None, num_kv_heads=None, head_dim=None, use_qk_norm=True,
         attn_logits_soft_cap=None, window_size=None, **kwargs):
    if embed_dim is None:
        return GroupedQueryAttention(**kwargs)
    return GroupedQueryAttention(
        **_seed_kwargs(embed_dim, num_heads, num_kv_heads, head_dim, use_qk_norm, attn_logits_soft_cap),
        sliding_window_size=window_size,
        **kwargs,
    )


def _cross_modal(embed_dim=None, num_heads=None, head_dim=None, **kwargs):
    from vishwam_keras.layers.attention.cross_modal import CrossModalAttention

    if embed_dim is not None:
        kwargs["hidden_dim"] = embed_dim
        head_dim = head_dim or embed_dim // num_heads
    return CrossModalAttention(num_heads=num_heads, head_dim=head_dim, **kwargs)


ATTENTION_TYPES = {
    "gqa": _gqa,
    "flash": FlashAttention2,
    "sliding": SlidingWindowAttention,
    "multi_scale": MultiScaleAttention,
    "sparse": SparseAttention,
    "cross_modal": _cross_modal,
}


def create_attention_layer(attention_type="gqa", **kwargs):
    """Build an attention layer by name.

    Args:
        attention_type: one of `"gqa"`, `"flash"`, `"sliding"`, `"multi_scale"`,
            `"sparse"`, `"cross_modal"`.
        **kwargs: the layer's arguments.

    Example:
    >>> layer = create_attention_layer("multi_scale", embed_dim=32, num_heads=4,
    ...                                window_sizes=[2, -1])
    >>> type(layer).__name__
    'MultiScaleAttention'
    """
    if attention_type not in ATTENTION_TYPES:
        raise ValueError(
            f"Unknown `attention_type={attention_type!r}`. Expected one of {sorted(ATTENTION_TYPES)}."
        )
    return ATTENTION_TYPES[attention_type](**kwargs)


__all__ = ["AttentionType", "ATTENTION_TYPES", "create_attention_layer"]
