"""Save tiny seeded models under one backend, or load them under another (run by
`test_cross_backend.py`, one process per backend: `KERAS_BACKEND` is read at import).

`save DIR`: a text and a vision `VishwamCausalLM`, each as `<name>.keras` and `<name>_preset/`,
plus the inputs and their logits as `.npy`. `load DIR`: load both formats and write
`<name>_<backend>_<format>.npy` logits.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/

import keras  # noqa: E402

from conftest import tiny_backbone_kwargs, tiny_vision_backbone  # noqa: E402
from vishwam_keras import VishwamBackbone, VishwamCausalLM, safety  # noqa: E402

MODELS = ("text", "vision")


def _inputs(name):
    rng = np.random.default_rng(0)
    vocabulary = 97 if name == "text" else 8192
    token_ids = rng.integers(7, vocabulary, (2, 9)).astype("int32")
    padding_mask = np.ones_like(token_ids)
    padding_mask[1, 6:] = 0
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    if name == "vision":
        token_ids[:, 1:3] = 6  # two <image_soft_token> placeholders: one image's tokens
        inputs["images"] = rng.uniform(-1, 1, (2, 1, 8, 8, 3)).astype("float32")
        inputs["image_mask"] = np.ones((2, 1), "int32")
    return inputs


def _build(name):
    keras.utils.set_random_seed(1234)
    if name == "text":
        return VishwamCausalLM(VishwamBackbone(**tiny_backbone_kwargs()))
    return VishwamCausalLM(tiny_vision_backbone())


def _logits(model, name):
    return np.asarray(keras.ops.convert_to_numpy(model(_inputs(name))), "float32")


def save(directory):
    for name in MODELS:
        model = _build(name)
        model.save(os.path.join(directory, f"{name}.keras"))
        model.save_to_preset(os.path.join(directory, f"{name}_preset"))
        np.save(os.path.join(directory, f"{name}_{keras.backend.backend()}_saved.npy"), _logits(model, name))


def load(directory):
    backend = keras.backend.backend()
    for name in MODELS:
        from_file = safety.load_model(os.path.join(directory, f"{name}.keras"), compile=False)
        np.save(os.path.join(directory, f"{name}_{backend}_keras.npy"), _logits(from_file, name))
        from_preset = VishwamCausalLM.from_preset(os.path.join(directory, f"{name}_preset"))
        np.save(os.path.join(directory, f"{name}_{backend}_preset.npy"), _logits(from_preset, name))


if __name__ == "__main__":
    {"save": save, "load": load}[sys.argv[1]](sys.argv[2])
    print("DONE", keras.backend.backend())
