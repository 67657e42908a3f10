import os
import sys

# The README promises JAX unless KERAS_BACKEND says otherwise (Keras alone would pick
# TensorFlow, or whatever ~/.keras/keras.json names).
os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))


def _fashion_mnist_found():
    from vishwam_keras.data import fashion_mnist

    try:
        fashion_mnist.find_fashion_mnist()
        return True
    except FileNotFoundError:
        return False


# Tests that read Fashion-MNIST (`.ci/run` installs Debian's package) skip without it.
requires_fashion_mnist = pytest.mark.skipif(
    not _fashion_mnist_found(),
    reason="Fashion-MNIST not found (apt-get install dataset-fashion-mnist, or set VISHWAM_DATA_DIR)",
)


@pytest.fixture(autouse=True)
def _seed_and_policy():
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


def tiny_backbone_kwargs(**overrides):
    kwargs = dict(
        vocabulary_size=97,
        num_layers=3,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        head_dim=8,
        sliding_window_size=4,
        sliding_window_pattern=3,
        attention_logit_soft_cap=50.0,
        final_logit_soft_cap=30.0,
    )
    kwargs.update(overrides)
    return kwargs


def tiny_vision_backbone(fusion_type="interleave", tokens_per_image=2, **overrides):
    from vishwam_keras import VishwamBackbone
    from vishwam_keras.layers.vision_encoder import SigLIPVisionEncoder

    encoder = SigLIPVisionEncoder(
        image_size=8, patch_size=4, hidden_dim=16, num_layers=1, num_heads=2,
        intermediate_dim=32, output_dim=32, pooling="map", num_pooled_tokens=tokens_per_image,
    )
    kwargs = tiny_backbone_kwargs(vocabulary_size=8192, **overrides)
    return VishwamBackbone(**kwargs, vision_encoder=encoder, fusion_type=fusion_type,
                           cross_attn_layers=[1] if fusion_type != "interleave" else None)
