"""MultiScaleAttention: head groups attending at different windows in one layer.

A GQA layer whose query/key/value heads are split into groups, each with its own window
(-1 = global); every group goes through the single dispatch point.
"""

import keras
from keras import ops

from vishwam_keras.layers.attention.grouped_query import GroupedQueryAttention, _seed_kwargs
from vishwam_keras.layers.attention.kernels import dot_product_attention


@keras.saving.register_keras_serializable(package="vishwam_keras")
class MultiScaleAttention(GroupedQueryAttention):
    """Heads split into `len(window_sizes)` groups, group g attends within `window_sizes[g]`.

    Short windows capture local structure cheaply, `-1` heads see the whole prefix. Both
    `num_heads` and `num_kv_heads` must be divisible by the number of windows, so each
    group owns whole key/value heads.

    Args:
        embed_dim: int. Model width.
        num_heads: int. Query heads.
        window_sizes: list of ints > 0 or -1 (global). Defaults to `[64, 256, 1024, -1]`.
        num_kv_heads: `None` or int. Defaults to `num_heads`.
        head_dim: `None` or int. Defaults to `embed_dim // num_heads`.
        use_qk_norm: bool. Defaults to `True`.
        attn_logits_soft_cap: `None` or float.
        **kwargs: other `GroupedQueryAttention` arguments.

    Example:
    >>> layer = MultiScaleAttention(embed_dim=32, num_heads=4, window_sizes=[2, -1])
    >>> tuple(layer(keras.ops.ones((1, 6, 32))).shape)
    (1, 6, 32)
    """

    def __init__(
        self,
        embed_dim,
        num_heads,
        window_sizes=(64, 256, 1024, -1),
        num_kv_heads=None,
        head_dim=None,
        use_qk_norm=True,
        attn_logits_soft_cap=None,
        **kwargs,
    ):
        window_sizes = list(window_sizes)
        if not window_sizes or any(
            isinstance(w, bool) or not isinstance(w, int) or (w <= 0 and w != -1) for w in window_sizes
        ):
            raise ValueError(
                "`window_sizes` must be a non-empty list of positive ints or -1 (global). "
                f"Received: window_sizes={window_sizes!r}"
            )
        groups = len(window_sizes)
        kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % groups or kv_heads % groups:
            raise ValueError(
                f"`num_heads` ({num_heads}) and `num_kv_heads` ({kv_heads}) must be divisible by "
                f"the number of windows ({groups}). Received: window_sizes={window_sizes!r}"
            )
        for name in ("hidden_dim", "num_query_heads", "num_key_value_heads", "use_query_key_norm",
                     "logit_soft_cap", "sliding_window_size"):
            kwargs.pop(name, None)
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.window_sizes = window_sizes
        super().__init__(
            **_seed_kwargs(embed_dim, num_heads, num_kv_heads, head_dim, use_qk_norm, attn_logits_soft_cap),
            **kwargs,
        )

    def _attend(self, query, key, value, **mask_kwargs):
        groups = len(self.window_sizes)
        q_per, kv_per = self.num_query_heads // groups, self.num_key_value_heads // groups
        outputs = []
        for g, window in enumerate(self.window_sizes):
            outputs.append(
                dot_product_attention(
                    query[:, :, g * q_per : (g + 1) * q_per],
                    key[:, :, g * kv_per : (g + 1) * kv_per],
                    value[:, :, g * kv_per : (g + 1) * kv_per],
                    causal=True,
                    sliding_window=None if window == -1 else window,
                    logit_soft_cap=self.logit_soft_cap,
                    scale=self.scale,
                    implementation=self.attention_implementation,
                    **mask_kwargs,
                )
            )
        return ops.concatenate(outputs, axis=2)

    def get_config(self):
        config = super().get_config()
        for name in ("hidden_dim", "num_query_heads", "num_key_value_heads", "use_query_key_norm",
                     "logit_soft_cap", "sliding_window_size"):
            config.pop(name)
        config.update(
            {
                "embed_dim": self.embed_dim,
                "num_heads": self.num_heads,
                "num_kv_heads": self.num_kv_heads,
                "window_sizes": self.window_sizes,
                "use_qk_norm": self.use_query_key_norm,
                "attn_logits_soft_cap": self.logit_soft_cap,
            }
        )
        return config
