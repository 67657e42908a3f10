"""Functional ops of vishwam_keras: `vishwam_keras.ops.dot_product_attention`."""

from vishwam_keras.layers.attention.kernels import dot_product_attention
