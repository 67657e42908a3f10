"""Functional ops of vishwam_keras: `vishwam_keras.ops.dot_product_attention` and its dispatch
info, and `masked_mean`."""

from vishwam_keras.layers.attention.kernels import (
    available_implementations,
    dot_product_attention,
    last_attention_implementation,
    set_attention_logging,
)
from vishwam_keras.ops.reductions import masked_mean
