import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))


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
