"""
Title: Getting started with vishwam-keras
Author: vishwam-keras maintainers
Date created: 2026/11/27
Last modified: 2026/11/27
Description: Install, pick a backend, load a preset, generate from text and images, fine-tune, save and reload.
Accelerator: None
"""

"""
## Introduction

vishwam-keras is a library of Gemma-style multimodal (text + image) transformers written
once in `keras.ops`, on top of KerasHub's `Backbone` / `CausalLM` / `Preprocessor` base
classes. If you have used `keras_hub.models.Gemma3CausalLM`, everything here will look
familiar: a **backbone** (the transformer), a **preprocessor** (tokenizer + image
converter), and a **task** (`VishwamCausalLM`) that puts them together with `fit()` and
`generate()`.

This guide walks through the whole life of a model:

1. install the package and choose a backend;
2. load a preset with `from_preset`;
3. `generate` text, then text about an image;
4. `fit` on a small `tf.data` pipeline;
5. save (`.keras` file and preset folder) and reload.

Every guide in `guides/` runs top to bottom with `python guides/NAME.py`. Set
`VISHWAM_GUIDE_SMALL=1` to shrink every size and step count so the guide finishes in well
under a minute on a laptop CPU; without it the sizes are realistic but still CPU-friendly.

## Setup

Install the package from a checkout (this is the README's command; the `demo` part trains
a tiny model on Shakespeare for a minute and samples from it):

```bash
pip install -e . && python -m vishwam_keras demo
```

### Choosing a backend

vishwam-keras runs on JAX, TensorFlow and PyTorch. Keras reads the backend from the
`KERAS_BACKEND` environment variable **before** `keras` is first imported, so set it in
your shell (`KERAS_BACKEND=tensorflow python guides/getting_started.py`) or at the very
top of your program, as below. The default here is JAX (CI also runs TensorFlow).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # quieter TensorFlow start-up
SMALL = os.environ.get("VISHWAM_GUIDE_SMALL", "0") not in ("", "0")

import tempfile
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

import vishwam_keras
from vishwam_keras.models.factory import create_preprocessor

START = time.time()
print(f"vishwam_keras {vishwam_keras.__version__}, keras {keras.__version__}, "
      f"backend {keras.backend.backend()}, small mode: {SMALL}")
keras.utils.set_random_seed(0)

"""
## Loading a preset

Presets are named, versioned model descriptions shipped inside the package (no network
is needed at run time). `vishwam_keras.available_presets()` lists them:
"""

print(vishwam_keras.available_presets())

"""
The one-line way to get a ready-to-use model is `from_preset`, exactly as with KerasHub:

```python
model = vishwam_keras.VishwamCausalLM.from_preset("vishwam_1b", dtype="bfloat16")
model.compile(sampler="top_k")
model.generate("To be, or not to be", max_length=32)
```

`from_preset` builds the backbone from the preset's `config.json`, the tokenizer from its
SentencePiece vocabulary, and wires both into a `VishwamCausalLMPreprocessor`. A preset
that ships **no trained weights** (today the 1B, 4B and 12B architectures; `python -m
vishwam_keras info` says which) loads randomly initialised with a warning: the
architecture and tokenizer are real, the text is gibberish until you train it.

In small mode we load the same preset's **preprocessor** by name, and build a tiny
backbone (`TINY_CONFIG`: 3 layers, width 64) instead of the 1B weights. The pieces are
interchangeable: any `VishwamBackbone` plus any `VishwamCausalLMPreprocessor` make a
`VishwamCausalLM`.
"""

SEQUENCE_LENGTH = 32 if SMALL else 64
preprocessor = vishwam_keras.VishwamCausalLMPreprocessor.from_preset(
    "vishwam_1b", sequence_length=SEQUENCE_LENGTH
)
tokenizer = preprocessor.tokenizer
print("vocabulary size:", tokenizer.vocabulary_size())
print("'To be, or not to be' ->", np.asarray(tokenizer("To be, or not to be")).tolist())

if SMALL:
    backbone = vishwam_keras.VishwamBackbone(**vishwam_keras.TINY_CONFIG.to_backbone_kwargs())
    model = vishwam_keras.VishwamCausalLM(backbone, preprocessor=preprocessor)
else:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ships no trained weights"
        model = vishwam_keras.VishwamCausalLM.from_preset("vishwam_1b", dtype="bfloat16")
print(f"{type(model).__name__}: {model.backbone.count_params():,} backbone parameters, "
      f"{model.backbone.num_layers} layers, layer types {model.backbone.layer_types[:6]}...")

"""
## Generating text

`compile(sampler=...)` picks any KerasHub sampler (`"greedy"`, `"top_k"`, `"top_p"`,
`"beam"`, or a `keras_hub.samplers.Sampler` instance). `generate` takes a string or a
list of strings; the prompt is prefilled once and then one token is decoded per step,
with ring-buffer caches on the sliding-window layers (see `guides/architecture.py`).
"""

model.compile(sampler="greedy")
max_length = 24 if SMALL else 32
print(model.generate("To be, or not to be", max_length=max_length))
print(model.generate(["ROMEO:", "The king"], max_length=max_length))

"""
A model **without** a preprocessor generates from token ids: pass a dict with
`token_ids` and `padding_mask` (1 on prompt tokens), padded to the output length, and
get token ids back. Two task models can share one backbone (and its weights).
"""

token_model = vishwam_keras.VishwamCausalLM(model.backbone)  # no preprocessor
token_model.compile(sampler="greedy")
prompt = preprocessor.generate_preprocess(["ROMEO:"], sequence_length=16)
print("prompt ids:", prompt["token_ids"][0].tolist())
generated = token_model.generate(prompt, stop_token_ids=None)
print("output ids:", np.asarray(generated["token_ids"])[0].tolist())

"""
## Generating text about an image

A multimodal model adds a SigLIP-style vision encoder. Its configuration is data: a
`MultimodalConfig` with `vision_embed_dim` set is a vision model. `create_multimodal_model`
builds the `VishwamCausalLM`, and `create_preprocessor` (in `vishwam_keras.models.factory`)
pairs the bundled tokenizer with a `VishwamImageConverter` of the right size.

In a prompt, each `<start_of_image>` marks where an image goes; the preprocessor expands it
to `<start_of_image>`, one `<image_soft_token>` per vision token, `<end_of_image>`, and the
backbone writes the vision tokens over the placeholders.
"""

vision_config = vishwam_keras.MultimodalConfig(
    embed_dim=64 if SMALL else 128,
    num_heads=4,
    num_kv_heads=2,
    num_layers=2 if SMALL else 4,
    intermediate_dim=128 if SMALL else 256,
    sliding_window_size=16,
    sliding_window_pattern=2,
    vision_embed_dim=32 if SMALL else 64,
    vision_num_layers=1 if SMALL else 2,
    vision_num_heads=2,
    image_size=32 if SMALL else 64,
    patch_size=8,
    num_vision_tokens=4 if SMALL else 16,
)
vision_model = vishwam_keras.create_multimodal_model(
    vision_config, preprocessor=create_preprocessor(vision_config, sequence_length=SEQUENCE_LENGTH)
)
vision_model.compile(sampler="greedy")
print(f"multimodal model: {vision_model.count_params():,} parameters "
      f"({vision_config.num_vision_tokens} vision tokens per image)")

# Any size, uint8 or float, grayscale or RGB: the image converter resizes and normalises.
image = np.zeros((48, 48, 3), "uint8")
image[12:36, 12:36] = 255  # a white square on black
outputs = vision_model.generate(
    {"prompts": ["<start_of_image> Caption:", "A plain text prompt"],
     "images": [[image], []]},
    max_length=max_length,
)
for text in outputs:
    print(repr(text))

"""
The second prompt has no image: a batch may mix prompts with any number of images
(one list per prompt), as long as each image has its `<start_of_image>` marker.

## Fine-tuning with `fit`

`VishwamCausalLM.fit` accepts raw strings: the attached preprocessor tokenises and packs
them into `(x, y, sample_weight)` for next-token prediction inside the `tf.data` pipeline.
Here we fine-tune on a few lines of *Hamlet* (public domain). For multimodal training,
elements are dicts `{"prompts", "responses", "images"}`; see
`guides/curriculum_training.py`.
"""

HAMLET = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
    "And by opposing end them. To die: to sleep;",
    "No more; and by a sleep to say we end",
    "The heart-ache and the thousand natural shocks",
    "That flesh is heir to, 'tis a consummation",
]
batch_size = 4
dataset = tf.data.Dataset.from_tensor_slices(HAMLET).shuffle(len(HAMLET), seed=0).batch(batch_size)

if not SMALL:
    # Fine-tuning a billion parameters is not a CPU job: train a small model instead.
    fit_config = vishwam_keras.MultimodalConfig(
        embed_dim=256, num_heads=4, num_kv_heads=2, num_layers=4, intermediate_dim=512,
        sliding_window_size=32, sliding_window_pattern=2,
    )
    model = vishwam_keras.VishwamCausalLM(fit_config.build_backbone(), preprocessor=preprocessor)

model.compile(
    optimizer=keras.optimizers.AdamW(learning_rate=3e-3, weight_decay=0.01),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    weighted_metrics=["accuracy"],
    sampler="greedy",
)
history = model.fit(
    dataset.repeat(),
    steps_per_epoch=len(HAMLET) // batch_size,
    epochs=3 if SMALL else 30,
    shuffle=False,  # the dataset shuffles itself (Keras warns about `shuffle=True` otherwise)
    verbose=2,
)
print(f"loss: {history.history['loss'][0]:.3f} -> {history.history['loss'][-1]:.3f}")
print(model.generate("To be, or not", max_length=max_length))

"""
## Saving and reloading

Two formats:

- a single `.keras` file (`model.save`), reloaded with `keras.saving.load_model`; it
  holds the config, the weights and the preprocessor;
- a **preset folder** (`model.save_to_preset`), KerasHub's format: `config.json`,
  `model.weights.h5`, `tokenizer.json`, `preprocessor.json` and the vocabulary under
  `assets/`. `VishwamCausalLM.from_preset(folder)` loads it, as for the shipped presets;
  the folder can be uploaded to Kaggle or Hugging Face like any KerasHub preset.
"""

workdir = tempfile.mkdtemp(prefix="vishwam_getting_started_")
keras_path = os.path.join(workdir, "model.keras")
preset_dir = os.path.join(workdir, "my_preset")
model.save(keras_path)
model.save_to_preset(preset_dir)
print("preset folder:", sorted(os.listdir(preset_dir)))

with warnings.catch_warnings():
    # Keras notes that the custom `compile()` and the optimizer state are not restored:
    # compile the reloaded model before training it again.
    warnings.simplefilter("ignore", UserWarning)
    from_file = keras.saving.load_model(keras_path)
from_preset = vishwam_keras.VishwamCausalLM.from_preset(preset_dir)

# `predict` runs the preprocessor too: strings in, logits out.
text = ["Whether 'tis nobler in the mind"]
expected = model.predict(text, verbose=0)
for name, reloaded in (("model.keras", from_file), ("preset", from_preset)):
    difference = np.abs(reloaded.predict(text, verbose=0) - expected).max()
    print(f"{name}: max |logits difference| = {difference:.2e}")
    assert difference < 1e-4, name

reloaded = from_preset
reloaded.compile(sampler="greedy")
print(reloaded.generate("To be, or not", max_length=max_length))

"""
## Where next

- `guides/architecture.py`: what is inside the backbone, each piece demonstrated.
- `guides/attention_variants.py`: the attention layers and the kernel dispatch.
- `guides/curriculum_training.py`: three-stage multimodal training with one call.
- `guides/distributed_training.py`, `guides/quantization_and_lora.py`,
  `guides/importing_gemma3_weights.py`.
"""

print(f"Done in {time.time() - START:.0f} s.")
