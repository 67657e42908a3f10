"""Gated-GELU feed-forward network (GeGLU), the MLP of every decoder block.

`down(gelu(gate(x)) * up(x))`, as in Gemma.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="vishwam_keras")
class GatedFeedForward(keras.layers.Layer):
    """Gated-GELU MLP: `down(gelu(x @ W_gate) * (x @ W_up))` (Shazeer, 2020).

    Args:
        hidden_dim: int. Input and output width.
        intermediate_dim: int. Width of the gated hidden layer.
        kernel_initializer: initializer. Defaults to variance scaling (fan_in, truncated normal).

    Example:
    >>> ffn = GatedFeedForward(hidden_dim=8, intermediate_dim=16)
    >>> tuple(ffn(keras.ops.ones((2, 3, 8))).shape)
    (2, 3, 8)
    """

    def __init__(self, hidden_dim, intermediate_dim, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("hidden_dim", hidden_dim), ("intermediate_dim", intermediate_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer
            or keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")
        )
        dense = dict(kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy)
        self.gate = keras.layers.EinsumDense("btd,df->btf", (None, intermediate_dim), name="gate", **dense)
        self.up = keras.layers.EinsumDense("btd,df->btf", (None, intermediate_dim), name="up", **dense)
        self.down = keras.layers.EinsumDense("btf,fd->btd", (None, hidden_dim), name="down", **dense)

    def build(self, input_shape):
        self.gate.build(input_shape)
        self.up.build(input_shape)
        self.down.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self.built = True

    def call(self, inputs):
        hidden = keras.activations.gelu(self.gate(inputs), approximate=True) * self.up(inputs)
        return self.down(hidden)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
