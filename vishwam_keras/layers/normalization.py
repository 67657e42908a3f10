"""RMSNorm, Gemma style: zero-initialised weights, scale `1 + w`, computed in float32.

Used before and after every attention and feed-forward block, for QK-norm and the final norm.
"""

import keras
from keras import ops

from vishwam_keras.checks import check_float


@keras.saving.register_keras_serializable(package="vishwam_keras")
class RMSNorm(keras.layers.Layer):
    """Root-mean-square normalisation over the last axis.

    `y = x / sqrt(mean(x^2) + epsilon) * (1 + scale)`. The scale starts at zero, so a
    fresh layer is a pure normalisation. The computation runs in float32 whatever the
    dtype policy, and the result is cast back to the compute dtype.

    Args:
        epsilon: float. Added to the mean square. Defaults to `1e-6`.

    Example:
    >>> norm = RMSNorm()
    >>> tuple(norm(keras.ops.ones((2, 3, 8))).shape)
    (2, 3, 8)
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = check_float("epsilon", epsilon, strict=True)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],), initializer="zeros"
        )
        self.built = True

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        variance = ops.mean(ops.square(x), axis=-1, keepdims=True)
        x = x * ops.rsqrt(variance + self.epsilon)
        x = x * (1.0 + ops.cast(self.scale, "float32"))
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="vishwam_keras")
class QueryKeyNormalization(keras.layers.Layer):
    """QK-norm: RMS-normalise queries and keys per head, each with its own scale.

    Keeps attention logits bounded as weights grow (Dehghani et al., 2023; Gemma 3).
    `GroupedQueryAttention(use_query_key_norm=True)` does the same inside attention.

    Args:
        epsilon: float. Defaults to `1e-6`.

    Call arguments:
        query: tensor `(..., head_dim)`.
        key: tensor `(..., head_dim)`.

    Example:
    >>> qk_norm = QueryKeyNormalization()
    >>> q, k = qk_norm(keras.ops.ones((1, 3, 2, 8)), keras.ops.ones((1, 3, 1, 8)))
    >>> tuple(q.shape), tuple(k.shape)
    ((1, 3, 2, 8), (1, 3, 1, 8))
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.query_norm = RMSNorm(epsilon, name="query_norm", dtype=self.dtype_policy)
        self.key_norm = RMSNorm(epsilon, name="key_norm", dtype=self.dtype_policy)

    def build(self, query_shape, key_shape=None):
        self.query_norm.build(query_shape)
        self.key_norm.build(key_shape or query_shape)
        self.built = True

    def call(self, query, key):
        return self.query_norm(query), self.key_norm(key)

    def compute_output_shape(self, query_shape, key_shape=None):
        return query_shape, key_shape or query_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config
