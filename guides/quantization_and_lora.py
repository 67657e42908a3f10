"""
Title: int8 quantization and LoRA fine-tuning
Author: vishwam-keras maintainers
Date created: 2026/11/27
Last modified: 2026/11/27
Description: Shrink a model to int8 for inference with `model.quantize("int8")`, and fine-tune a small fraction of its weights with `backbone.enable_lora(rank)`.
Accelerator: None
"""

"""
## Introduction

Two standard Keras 3 tools work on Vishwam models unchanged, because every projection is
a plain `keras.layers.EinsumDense` and the embedding a `ReversibleEmbedding`:

- **`model.quantize("int8")`** replaces float kernels (and the tied embedding) by int8
  values with per-channel float scales: about 4x less memory for the weights, for
  inference.
- **LoRA** (Hu et al., 2021): `backbone.enable_lora(rank)` freezes every weight and adds
  two small trainable matrices `A (d_in x r)`, `B (r x d_out)` beside the query and value
  projections; the layer computes `x W + x A B`. `B` starts at zero, so the model is
  unchanged until it trains. Fine-tuning then touches well under 1% of the parameters,
  and the adapters can be saved and shipped on their own.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SMALL = os.environ.get("VISHWAM_GUIDE_SMALL", "0") not in ("", "0")

import tempfile
import time
import warnings

import keras
import keras_hub
import numpy as np
import tensorflow as tf

import vishwam_keras

START = time.time()
print(f"backend {keras.backend.backend()}, small mode: {SMALL}")

"""
## A model to work on

A small text model with the bundled tokenizer (the same calls apply to
`VishwamCausalLM.from_preset("vishwam_1b")`).
"""

SEQUENCE_LENGTH = 32 if SMALL else 64
config = vishwam_keras.TINY_CONFIG if SMALL else vishwam_keras.MultimodalConfig(
    embed_dim=256, num_heads=4, num_kv_heads=2, num_layers=6, intermediate_dim=1024,
    sliding_window_size=32, sliding_window_pattern=3,
)
# Seed once, before any tokenizer runs: `keras.utils.set_random_seed` calls
# `tf.random.set_seed`, which clears TensorFlow's kernel cache and with it the SentencePiece
# resource of a tokenizer already used, after which `fit`/`predict` on strings fail with
# "Resource ... SentencepieceOp ... does not exist" (tensorflow/text#570).
keras.utils.set_random_seed(0)
preprocessor = vishwam_keras.VishwamCausalLMPreprocessor.from_preset(
    "vishwam_1b", sequence_length=SEQUENCE_LENGTH
)


def build_model(weights=None):
    """A new model; with `weights` (`{path: array}`), a copy of another's weights."""
    model = vishwam_keras.VishwamCausalLM(config.build_backbone(), preprocessor=preprocessor)
    for weight in model.weights if weights else []:
        weight.assign(weights[weight.path])
    return model


def weight_bytes(model):
    def itemsize(dtype):
        dtype = keras.backend.standardize_dtype(dtype)
        return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize

    return sum(int(np.prod(w.shape)) * itemsize(w.dtype) for w in model.weights)


model = build_model()
print(f"{model.count_params():,} parameters, {weight_bytes(model) / 2**20:.2f} MiB of weights")

"""
## int8 quantization

`quantize("int8")` works in place on a built model. Generation is unchanged from the
caller's side; greedy decoding of an untrained model is fragile (near-ties flip), so we
compare the next-token predictions of the float and the int8 model on some text instead
of whole generations.
"""

text = ["To be, or not to be, that is the question:",
        "Whether 'tis nobler in the mind to suffer"]
float_logits = model.predict(text, verbose=0)
float_bytes = weight_bytes(model)


def quantize_int8(model):
    # Workaround: `Model.quantize` walks every layer, the preprocessor's included, and
    # refuses unbuilt ones; `VishwamCausalLMPreprocessor` keeps an unbuilt
    # `MultiSegmentPacker` until it first packs a prompt/response dict. Skip it with
    # `filters` (it holds nothing to quantize).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # one note per layer without weights
        model.quantize(
            "int8", filters=lambda layer: not isinstance(layer, keras_hub.layers.MultiSegmentPacker)
        )


quantize_int8(model)
int8_logits = model.predict(text, verbose=0)
print(f"weights: {float_bytes / 2**20:.2f} MiB float32 -> {weight_bytes(model) / 2**20:.2f} MiB int8")
print("dtypes:", sorted({keras.backend.standardize_dtype(w.dtype) for w in model.weights}))
agreement = (float_logits.argmax(-1) == int8_logits.argmax(-1)).mean()
print(f"next-token predictions that agree: {100 * agreement:.0f}%; "
      f"max |logit difference| {np.abs(float_logits - int8_logits).max():.3f}")
model.compile(sampler="greedy")
print("int8 generate:", model.generate("To be, or not", max_length=SEQUENCE_LENGTH // 2))

"""
Other modes follow the same call: `"float8"` (for fp8 training on recent GPUs) and
`"int4"` in recent Keras versions. Quantize after training, or train with LoRA on top of
an int8 model (QLoRA style) as shown at the end.

## LoRA fine-tuning

`enable_lora(rank)` on the **backbone** targets the query and value projections of
every attention layer (KerasHub's default, `"query"`/`"value"` layer names). Everything
else becomes non-trainable.
"""

model = build_model()
base_weights = {w.path: keras.ops.convert_to_numpy(w).copy() for w in model.weights}
model.backbone.enable_lora(rank=4)
trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
print(f"trainable: {trainable:,} of {model.count_params():,} parameters "
      f"({100 * trainable / model.count_params():.2f}%)")
print("adapters:", [w.path for w in model.trainable_weights][:4], "...")

HAMLET = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
]
dataset = tf.data.Dataset.from_tensor_slices(HAMLET).batch(2).repeat()
model.compile(
    optimizer=keras.optimizers.Adam(5e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    weighted_metrics=["accuracy"],
    sampler="greedy",
)
history = model.fit(dataset, steps_per_epoch=2, epochs=2 if SMALL else 20, shuffle=False, verbose=2)

changed = [w.path for w in model.weights
           if w.path in base_weights and not np.array_equal(keras.ops.convert_to_numpy(w), base_weights[w.path])]
print("base weights changed by training:", changed or "none")

"""
### Saving adapters, and merging them

`save_lora_weights` writes only the adapters: a few kilobytes, to load onto any copy of
the same base model with `load_lora_weights` (after `enable_lora` with the same rank).
Saving the whole model instead (`model.save(...)`) folds the adapters into the kernels,
so the reloaded model needs no LoRA at all.
"""

workdir = tempfile.mkdtemp(prefix="vishwam_lora_")
lora_path = os.path.join(workdir, "hamlet.lora.h5")
model.backbone.save_lora_weights(lora_path)
print(f"adapter file: {os.path.getsize(lora_path) / 1024:.1f} KiB")
expected = model.predict(text, verbose=0)

fresh = build_model(weights=base_weights)  # a copy of the base model before LoRA
fresh.backbone.enable_lora(rank=4)
fresh.backbone.load_lora_weights(lora_path)
print(f"base + loaded adapters vs trained model: max difference "
      f"{np.abs(fresh.predict(text, verbose=0) - expected).max():.1e}")

merged_path = os.path.join(workdir, "merged.keras")
model.save(merged_path)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # the custom compile() is not restored
    merged = keras.saving.load_model(merged_path)
print(f"merged model: {len([w for w in merged.weights if 'lora' in w.path])} LoRA weights, "
      f"max difference {np.abs(merged.predict(text, verbose=0) - expected).max():.1e}")

"""
### LoRA on an int8 model

Quantize the frozen base, then add float adapters: the memory of int8 weights with the
trainability of LoRA.
"""

qlora = build_model()
quantize_int8(qlora)
qlora.backbone.enable_lora(rank=4)
qlora.compile(
    optimizer=keras.optimizers.Adam(5e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
qlora_history = qlora.fit(dataset, steps_per_epoch=2, epochs=2, shuffle=False, verbose=0)
print(f"int8 + LoRA: {weight_bytes(qlora) / 2**20:.2f} MiB of weights, loss "
      f"{qlora_history.history['loss'][0]:.3f} -> {qlora_history.history['loss'][-1]:.3f}")

print(f"Done in {time.time() - START:.0f} s.")
