"""
Title: Importing KerasHub Gemma 3 weights
Author: vishwam-keras maintainers
Date created: 2026/11/27
Last modified: 2026/11/27
Description: Convert a `keras_hub.models.Gemma3Backbone` (text, or text and vision) into a `VishwamBackbone` with `vishwam_keras.from_keras_hub_gemma3`, and check that both compute the same logits.
Accelerator: None
"""

"""
## Introduction

A `VishwamBackbone` can express the text stack of Gemma 3 exactly: GQA with QK-norm,
sandwich norms, 5 local : 1 global layers with their own RoPE wavelengths, RoPE scaling
on global layers, soft caps. `vishwam_keras.from_keras_hub_gemma3(gemma3_backbone)` maps
the configuration and copies every weight (transposing Gemma's heads-first
query/key/value kernels), so you can start from released Gemma 3 checkpoints and keep
Vishwam's ring-buffer caches, single attention dispatch and curriculum training.

With network access (and Kaggle credentials for the Gemma license), the real thing is:

```python
import keras_hub
import vishwam_keras

gemma = keras_hub.models.Gemma3Backbone.from_preset("gemma3_1b")
backbone = vishwam_keras.from_keras_hub_gemma3(gemma)
model = vishwam_keras.VishwamCausalLM(backbone)   # token ids in, token ids out
```

(Gemma's tokenizer is not ours: keep using `keras_hub.models.Gemma3Tokenizer` to turn text
into ids, or pass token ids as below.) Here we convert a small randomly initialised
`Gemma3Backbone` instead, which needs nothing from the network.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SMALL = os.environ.get("VISHWAM_GUIDE_SMALL", "0") not in ("", "0")

import time
import warnings

import keras
import keras_hub
import numpy as np

import vishwam_keras

START = time.time()
keras.utils.set_random_seed(0)
print(f"backend {keras.backend.backend()}, keras_hub {keras_hub.__version__}, small mode: {SMALL}")

"""
## A small Gemma 3

Seven layers with `sliding_window_size=4`: layers 0-4 are local, 5 is global, 6 local
again, so the comparison below exercises both kinds, the window and RoPE scaling. We
replace every weight, norms included, by random values, so a weight that lands in the
wrong place cannot hide behind an initialiser that happens to be symmetric (ones for
every norm scale, say).
"""

VOCABULARY = 256 if SMALL else 1024
gemma = keras_hub.models.Gemma3Backbone(
    vocabulary_size=VOCABULARY,
    image_size=16,
    num_layers=7,
    num_query_heads=4,
    num_key_value_heads=2,
    hidden_dim=32 if SMALL else 128,
    intermediate_dim=64 if SMALL else 256,
    head_dim=8 if SMALL else 32,
    use_post_ffw_norm=True,
    use_post_attention_norm=True,
    attention_logit_soft_cap=50.0,
    final_logit_soft_cap=30.0,
    use_sliding_window_attention=True,
    sliding_window_size=4,
    global_rope_scaling_factor=8.0,
    dtype="float32",
)
rng = np.random.default_rng(0)
for weight in gemma.weights:
    # Small embeddings and large block weights: a random model with tied embeddings
    # otherwise just repeats its last token, which would make the generation check below
    # say little.
    std = 0.05 if "embedding" in weight.path else 0.5
    weight.assign(rng.normal(0.0, std, weight.shape).astype("float32"))
print(f"Gemma3Backbone: {gemma.count_params():,} parameters")

"""
## Converting
"""

backbone = vishwam_keras.from_keras_hub_gemma3(gemma)
print(f"VishwamBackbone: {backbone.count_params():,} parameters")
print("layer types:", backbone.layer_types)
print(f"window {backbone.sliding_window_size}, RoPE local {backbone.local_rope_max_wavelength} / "
      f"global {backbone.global_rope_max_wavelength} x{backbone.global_rope_scaling_factor}, "
      f"soft caps {backbone.attention_logit_soft_cap} / {backbone.final_logit_soft_cap}, "
      f"query scale 1/sqrt({backbone.query_pre_attn_scalar})")

"""
## Checking the logits

Both backbones return the final hidden states; their tied embeddings turn them into
logits. A batch with right padding, left padding and a sequence longer than the window
must give the same logits at every real token.
"""

LENGTH = 14
padding_mask = np.ones((3, LENGTH), "int32")
padding_mask[1, 9:] = 0  # right padding
padding_mask[2, :3] = 0  # left padding
token_ids = rng.integers(1, VOCABULARY, (3, LENGTH)).astype("int32") * padding_mask
inputs = {"token_ids": token_ids, "padding_mask": padding_mask}


def logits(any_backbone, any_inputs):
    hidden = any_backbone.output
    if isinstance(hidden, dict):  # a vision model (below) also returns image embeddings
        hidden = hidden["sequence_output"]
    model = keras.Model(any_backbone.input, any_backbone.token_embedding(hidden, reverse=True))
    return np.asarray(model.predict(any_inputs, verbose=0))


expected, converted = logits(gemma, inputs), logits(backbone, inputs)
difference = np.abs(expected - converted)[padding_mask.astype(bool)].max()
print(f"max |logit difference| over real tokens: {difference:.2e}")
assert difference < 1e-3, difference

"""
## Generating

The converted backbone drops into `VishwamCausalLM` like any other. Its greedy
`generate` (one prefill, then cached decode steps, with ring buffers on the local layers)
picks the same tokens as running the *original* Gemma 3 backbone on the whole prefix at
every step:
"""

total = 16
prompt = {"token_ids": np.zeros((1, total), "int32"), "padding_mask": np.zeros((1, total), "int32")}
prompt["token_ids"][0, :3] = token_ids[0, :3]
prompt["padding_mask"][0, :3] = 1

ours = vishwam_keras.VishwamCausalLM(backbone)
ours.compile(sampler="greedy")
our_tokens = np.asarray(ours.generate(prompt, stop_token_ids=None)["token_ids"])[0]

gemma_logits = keras.Model(gemma.input, gemma.token_embedding(gemma.output, reverse=True))
reference = prompt["token_ids"].copy()
for position in range(3, total):
    step = gemma_logits.predict(
        {"token_ids": reference, "padding_mask": np.ones_like(reference)}, verbose=0
    )
    reference[0, position] = int(np.argmax(step[0, position - 1]))
print("Gemma3Backbone, full recompute:", reference[0].tolist())
print("VishwamCausalLM.generate      :", our_tokens.tolist())
print(f"KV cache for 8k tokens: ours {ours.cache_bytes(1, 8192) / 2**20:.2f} MiB; "
      f"full length in every layer (KerasHub's Gemma3CausalLM) "
      f"{2 * backbone.num_key_value_heads * backbone.head_dim * 8192 * backbone.num_layers * 4 / 2**20:.2f} MiB")

"""
## A Gemma 3 with images

A `Gemma3Backbone` with a `Gemma3VisionEncoder` converts too. Its SigLIP tower (patch
convolution, ViT blocks, average pooling of the patch grid by `pool_size`, RMSNorm and
projection to the text width) becomes a `SigLIPVisionEncoder(pooling="avg")`, and the
model fuses images by `"interleave"`: image tokens replace placeholder tokens and attend
to each other both ways. KerasHub is told where the image tokens go (`vision_indices`,
`vision_mask`); ours finds them from the placeholder id in `token_ids`, so the converter
needs that id: `Gemma3Tokenizer.image_placeholder_id` (`<img>`) for a real checkpoint,
any unused id in this toy vocabulary.

```python
gemma = keras_hub.models.Gemma3Backbone.from_preset("gemma3_instruct_4b")
tokenizer = keras_hub.models.Gemma3Tokenizer.from_preset("gemma3_instruct_4b")
backbone = vishwam_keras.from_keras_hub_gemma3(
    gemma, image_token_id=tokenizer.image_placeholder_id
)
```

Here: 28 x 28 images, 7 x 7 patches (a 4 x 4 grid) pooled by 2, so 4 tokens per image.
"""

from keras_hub.models import Gemma3VisionEncoder

IMAGE_TOKEN_ID, IMAGE_SIZE = 6, 28
vision_encoder = Gemma3VisionEncoder(
    image_size=IMAGE_SIZE, patch_size=7, num_heads=2, hidden_dim=16, num_layers=2,
    intermediate_dim=32, output_dim=gemma.hidden_dim, pool_size=2, dtype="float32",
)
text_config = {key: value for key, value in gemma.get_config().items()
               if key not in ("name", "trainable", "vision_encoder", "image_size")}
# The text model above, plus the vision tower.
vision_gemma = keras_hub.models.Gemma3Backbone(
    **text_config, image_size=IMAGE_SIZE, vision_encoder=vision_encoder
)
for weight in vision_gemma.weights:
    weight.assign(rng.normal(0.0, 0.3, weight.shape).astype("float32"))
vision_backbone = vishwam_keras.from_keras_hub_gemma3(vision_gemma, image_token_id=IMAGE_TOKEN_ID)
print("vision encoder:", type(vision_backbone.vision_encoder).__name__,
      f"pooling={vision_backbone.vision_encoder.pooling!r},",
      f"{vision_backbone.vision_encoder.num_output_tokens} tokens per image")

"""
One prompt with two images, each image's placeholders between text tokens (Gemma 3's
prompts put `<start_of_image>` before and `<end_of_image>` after them). KerasHub gets
the placeholder positions; ours gets `image_mask`, one flag per image.
"""

image_ids = rng.integers(IMAGE_TOKEN_ID + 1, VOCABULARY, (1, LENGTH)).astype("int32")
image_ids[0, 2:6] = image_ids[0, 8:12] = IMAGE_TOKEN_ID
images = rng.normal(0.0, 1.0, (1, 2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
is_image = image_ids == IMAGE_TOKEN_ID
shared = {"token_ids": image_ids, "padding_mask": np.ones_like(image_ids), "images": images}
their_inputs = {**shared, "vision_mask": is_image.astype("int32"),
                "vision_indices": np.flatnonzero(is_image[0])[None].astype("int32")}
our_inputs = {**shared, "image_mask": np.ones((1, 2), "int32")}
difference = np.abs(
    logits(vision_gemma, their_inputs) - logits(vision_backbone, our_inputs)
).max()
print(f"with images: max |logit difference| {difference:.2e}")
assert difference < 1e-3, difference

"""
## What does not convert

The converter refuses, with a `NotImplementedError` naming the option, what a
`VishwamBackbone` cannot express: backbones without the post-attention /
post-feed-forward norms, a local RoPE scaling factor other than 1, EmbeddingGemma's
pooling heads and bidirectional attention; in a vision encoder, a pool size that does not
divide the patch grid, more tokens per image than the sliding window (KerasHub windows
attention inside an image on local layers), norms with different epsilons.
"""

unsupported = keras_hub.models.Gemma3Backbone(
    vocabulary_size=VOCABULARY, image_size=16, num_layers=1, num_query_heads=2,
    num_key_value_heads=1, hidden_dim=16, intermediate_dim=32, head_dim=8,
    use_post_ffw_norm=False, use_post_attention_norm=False,
)
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vishwam_keras.from_keras_hub_gemma3(unsupported)
except NotImplementedError as error:
    print("NotImplementedError:", str(error)[:160], "...")

print(f"Done in {time.time() - START:.0f} s.")
