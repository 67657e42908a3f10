"""Functional ops of vishwam_keras: `vishwam_keras.ops.dot_product_attention` and its dispatch info."""

from vishwam_keras.layers.attention.kernels import (
    available_implementations,
    dot_product_attention,
    last_attention_implementation,
    set_attention_logging,
)
