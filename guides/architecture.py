"""
Title: Inside a Vishwam model
Author: vishwam-keras maintainers
Date created: 2026/11/27
Last modified: 2026/11/27
Description: The data flow, GQA, QK-norm, RoPE scaling, local/global layers with ring-buffer caches, soft caps and the three ways images enter, each demonstrated.
Accelerator: None
"""

"""
## Introduction

A Vishwam model is a Gemma-3-style decoder with an optional SigLIP vision encoder. This
guide opens it up: each architectural idea gets a paragraph of *why* and a few lines of
code that show it at work on tiny tensors. Everything runs on a CPU in seconds
(`VISHWAM_GUIDE_SMALL=1` makes the sizes smaller still).

## The data flow

This picture (from `DESIGN.md`) is the map; every component below is one box of it:

```
text, images --preprocessor--> token_ids, padding_mask, images, image positions
images --vision_encoder--> patch tokens --MAP/avg pool--> N vision tokens --projector--> d_model
token_ids --embedding--> x ; vision tokens interleaved into x and/or fed to gated cross-attention
x --[decoder_block x L]--> (local/global attention via kernels.py, KV cache in generate)
  --final norm--> tied embedding^T --soft cap--> logits
fit:      logits + targets + pooled embeddings --losses--> scalar; callbacks drive the curriculum
generate: prefill once, then decode steps reusing per-layer caches; sampler from keras_hub
```

Each decoder block is "sandwich"-normalised as in Gemma 3:
`x = x + post_norm(attention(pre_norm(x)))`, then the same around a gated-GELU MLP.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SMALL = os.environ.get("VISHWAM_GUIDE_SMALL", "0") not in ("", "0")

import time

import keras
import numpy as np
from keras import ops

import vishwam_keras
from vishwam_keras.models.factory import create_preprocessor

START = time.time()
keras.utils.set_random_seed(0)
WIDTH = 32 if SMALL else 128
LENGTH = 12 if SMALL else 32


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def max_difference(a, b):
    return float(np.abs(to_numpy(a) - to_numpy(b)).max())


print(f"backend {keras.backend.backend()}, small mode: {SMALL}")

"""
## Grouped-query attention (GQA)

Multi-head attention gives every query head its own key and value head. GQA (Ainslie et
al., 2023) lets groups of query heads share one key/value head: the keys and values, and
therefore the KV cache that dominates memory at generation time, shrink by
`num_query_heads / num_key_value_heads`. `num_key_value_heads=1` is multi-query attention
(the 1B preset uses 4 query heads and 1 KV head).

Query heads `k * G ... k * G + G - 1` read key/value head `k` (`G` = group size). So a GQA
layer computes exactly what multi-head attention computes when each KV head is copied to
its `G` query heads; we check that below by building an 8-head MHA layer from a 2-KV-head
GQA layer's weights.
"""

num_query_heads, num_kv_heads, head_dim = 8, 2, WIDTH // 8
gqa = vishwam_keras.GroupedQueryAttention(
    hidden_dim=WIDTH, num_query_heads=num_query_heads, num_key_value_heads=num_kv_heads,
    head_dim=head_dim, use_query_key_norm=False,
)
mha = vishwam_keras.GroupedQueryAttention(
    hidden_dim=WIDTH, num_query_heads=num_query_heads, num_key_value_heads=num_query_heads,
    head_dim=head_dim, use_query_key_norm=False,
)
x = keras.random.normal((2, LENGTH, WIDTH), seed=1)
gqa_out = gqa(x)
mha(x)  # build
for weight in gqa.weights:
    print(f"  GQA {weight.path:40s} {tuple(weight.shape)}")
group = num_query_heads // num_kv_heads
mha.query_dense.kernel.assign(gqa.query_dense.kernel)
mha.output_dense.kernel.assign(gqa.output_dense.kernel)
mha.key_dense.kernel.assign(np.repeat(to_numpy(gqa.key_dense.kernel), group, axis=1))
mha.value_dense.kernel.assign(np.repeat(to_numpy(gqa.value_dense.kernel), group, axis=1))
print(f"GQA vs MHA with copied KV heads: max difference {max_difference(gqa_out, mha(x)):.2e}")
print(f"KV cache per token: GQA {2 * num_kv_heads * head_dim} values, "
      f"MHA {2 * num_query_heads * head_dim} values ({group}x more)")

"""
## QK-norm

Gemma 3 replaces Gemma 2's attention soft cap with **QK-norm**: queries and keys are
RMS-normalised per head before the dot product, so the attention logits cannot grow
with the activations' scale (a common cause of loss spikes in long training runs).

A quick way to see it: scale the input by 100. With QK-norm the attention pattern does
not change (only the values scale, so the output is 100 times larger, up to the norm's
epsilon); without it the logits grow 10,000-fold and the softmax saturates into a
different pattern.
"""

for use_qk_norm in (True, False):
    layer = vishwam_keras.GroupedQueryAttention(
        hidden_dim=WIDTH, num_query_heads=4, num_key_value_heads=2, head_dim=WIDTH // 4,
        use_query_key_norm=use_qk_norm,
    )
    relative = max_difference(layer(100.0 * x) / 100.0, layer(x))
    relative /= float(np.abs(to_numpy(layer(x))).max())
    print(f"use_query_key_norm={use_qk_norm!s:5}: output(100 x) / 100 vs output(x): "
          f"relative difference {relative:.1e}")

"""
## RoPE, and RoPE scaling on global layers

Rotary position embeddings (Su et al., 2021) rotate each (first half, second half) pair
of query/key features by an angle proportional to the position. A query at position `i`
and a key at `j` then score by a function of `i - j` only: attention sees *relative*
positions.

`scaling_factor` divides positions before rotating ("position interpolation"). Gemma 3
uses a base wavelength of 1M and a factor of 8 on its global layers to stretch a model
trained on short contexts to long ones, and 10k without scaling on local layers (which
never see distances beyond their window). With factor 8, position 80 rotates exactly as
position 10 does without scaling.
"""

rope = vishwam_keras.RotaryEmbedding(max_wavelength=10_000)
q = keras.random.normal((1, 1, 1, 16), seed=2)
k = keras.random.normal((1, 1, 1, 16), seed=3)


def score(i, j, layer=rope):
    rotated_q = layer(q, positions=ops.convert_to_tensor([i]))
    rotated_k = layer(k, positions=ops.convert_to_tensor([j]))
    return float(ops.sum(rotated_q * rotated_k))


print(f"score(q@3, k@1) = {score(3, 1):.5f}, score(q@103, k@101) = {score(103, 101):.5f}  "
      "(same distance, same score)")
scaled = vishwam_keras.RotaryEmbedding(max_wavelength=10_000, scaling_factor=8.0)
print(f"scaling 8 at position 80 vs no scaling at 10: max difference "
      f"{max_difference(scaled(q, positions=ops.convert_to_tensor([80])), rope(q, positions=ops.convert_to_tensor([10]))):.1e}")

"""
## Local and global layers

Most layers are **local**: a token attends only to the last `sliding_window_size`
tokens. Every `sliding_window_pattern`-th layer is **global** and sees the whole prefix
(5 local : 1 global in the presets). Local layers are cheap (linear in length) and keep
short-range detail; the few global layers carry long-range information.

The window is a property of the mask, which every layer passes to one function,
`vishwam_keras.ops.dot_product_attention`. Here, with a window of 4, the output at
position 8 does not depend on the key at position 0 at all, while a global layer's does.
"""

window = 4
query = keras.random.normal((1, LENGTH, 2, 8), seed=4)
key = keras.random.normal((1, LENGTH, 2, 8), seed=5)
value = keras.random.normal((1, LENGTH, 2, 8), seed=6)
changed_value = ops.concatenate([value[:, :1] + 10.0, value[:, 1:]], axis=1)  # change token 0
for sliding_window in (window, None):
    before = vishwam_keras.ops.dot_product_attention(query, key, value, sliding_window=sliding_window)
    after = vishwam_keras.ops.dot_product_attention(query, key, changed_value, sliding_window=sliding_window)
    kind = "local (window 4)" if sliding_window else "global"
    print(f"{kind:17s}: changing token 0 moves the output at position 8 by "
          f"{max_difference(before[:, 8], after[:, 8]):.3f}")

"""
### Ring-buffer KV caches

When generating, each layer caches its keys and values so each new token costs one
step. A global layer needs all `max_length` positions. A local layer only ever looks at
the last `sliding_window_size` keys, so Vishwam gives it a **ring buffer** of that size:
position `p` lives in slot `p % window`, overwriting the key that just fell out of the
window (KerasHub's Gemma 3 keeps the full length for every layer).
`model.cache_bytes(batch, length)` reports what `generate` allocates.
"""

backbone = vishwam_keras.VishwamBackbone(
    **dict(vishwam_keras.TINY_CONFIG.to_backbone_kwargs(), final_logit_soft_cap=5.0)
)
model = vishwam_keras.VishwamCausalLM(backbone)
# At its initial scale a random model with tied embeddings keeps repeating its last
# token; large random block weights (and small embeddings) make the greedy path below
# wander through the vocabulary instead, so the comparison with a full recompute means
# something.
rng = np.random.default_rng(0)
for weight in model.weights:
    std = 0.02 if "embedding" in weight.path else 1.0
    weight.assign(rng.normal(0.0, std, weight.shape).astype("float32"))
print("tiny model layer types:", backbone.layer_types, "window", backbone.sliding_window_size)


def full_cache_bytes(num_layers, num_kv_heads, head_dim, batch, length, itemsize):
    return 2 * batch * num_kv_heads * head_dim * length * num_layers * itemsize


def ring_cache_bytes(config, batch, length, itemsize):
    kwargs = config.to_backbone_kwargs()
    layer_types = kwargs["layer_types"] or [
        "global" if (i + 1) % config.sliding_window_pattern == 0 else "local"
        for i in range(config.num_layers)
    ]
    slots = sum(length if t == "global" else min(config.sliding_window_size, length)
                for t in layer_types)
    return 2 * batch * config.num_kv_heads * config.head_dim * slots * itemsize


batch, length = 1, 1024
print(f"tiny model, batch {batch}, length {length}: ring buffers "
      f"{model.cache_bytes(batch, length) / 2**20:.2f} MiB vs full-length "
      f"{full_cache_bytes(backbone.num_layers, backbone.num_key_value_heads, backbone.head_dim, batch, length, 4) / 2**20:.2f} MiB")
assert model.cache_bytes(batch, length) == ring_cache_bytes(vishwam_keras.TINY_CONFIG, batch, length, 4)

print("bfloat16 KV cache of the presets, batch 1 (the same formula as `cache_bytes`):")
print(f"  {'preset':12s} {'length':>7s} {'ring buffers':>13s} {'full length':>12s}")
for name in ("vishwam_1b", "vishwam_4b", "vishwam_12b"):
    config = vishwam_keras.MODEL_CONFIGS[name]
    for length in (8192, 32768, 131072):
        ring = ring_cache_bytes(config, 1, length, 2) / 2**30
        full = full_cache_bytes(config.num_layers, config.num_kv_heads, config.head_dim, 1, length, 2) / 2**30
        print(f"  {name:12s} {length:7d} {ring:10.2f} GiB {full:9.2f} GiB")

"""
The ring buffer is exact, not an approximation: greedy `generate` (prefill, then cached
decode steps that wrap around the 8-slot buffers several times) produces the same tokens
as re-running the full model on the whole prefix at every step.
"""

model.compile(sampler="greedy")
total = 24 if SMALL else 40
prompt_ids = np.zeros((1, total), "int32")
prompt_ids[0, :3] = [2, 590, 8136]
prompt_mask = (prompt_ids != 0).astype("int32")
generated = to_numpy(
    model.generate({"token_ids": prompt_ids, "padding_mask": prompt_mask}, stop_token_ids=None)["token_ids"]
)[0]

reference = prompt_ids.copy()
full_mask = np.ones_like(reference)
for position in range(3, total):
    logits = model.predict({"token_ids": reference, "padding_mask": full_mask}, verbose=0)
    reference[0, position] = int(np.argmax(logits[0, position - 1]))
print("cached generate:", generated.tolist())
print("full recompute :", reference[0].tolist())
print("identical:", bool((generated == reference[0]).all()))

"""
## Soft caps

Gemma 2 uses **logit soft caps**: `c * tanh(s / c)` squashes a value smoothly
into `(-c, c)` while leaving small values almost unchanged. Vishwam supports a cap on
the attention scores (`attention_logit_soft_cap`) and on the output logits
(`final_logit_soft_cap`); the tiny model above was built with a final cap of 5, so no
logit can leave `(-5, 5)` however large the hidden state grows.
"""

for value_in in (0.5, 2.0, 10.0, 100.0):
    print(f"  soft cap 5: {value_in:6.1f} -> {5.0 * np.tanh(value_in / 5.0):.3f}")
logits = model.predict({"token_ids": prompt_ids, "padding_mask": np.ones_like(prompt_ids)}, verbose=0)
print(f"largest |logit| of the capped model: {np.abs(logits).max():.3f} (cap 5)")

"""
## How image tokens enter the text

A vision model encodes each image with a SigLIP ViT, pools the patch tokens to
`num_vision_tokens` tokens and projects them to the text width. The `fusion_type` of the
backbone then says how they reach the text:

- `"interleave"` (Gemma 3): the vision tokens **replace** `<image_soft_token>`
  placeholders in the embedded sequence. Text stays causal, but the tokens of one image
  attend to each other **bidirectionally** (an image has no left-to-right order).
- `"cross_attention"` (Flamingo): text tokens keep their sequence; after some decoder
  blocks, a **gated cross-attention** block lets them read the vision tokens.
- `"adaptive_gate"`: both, with the cross-attention update mixed in through a learned
  per-token gate (`AdaptiveModalityFusion`).

### Bidirectional spans

Spans are part of the mask description: tokens that share a `span_id > 0` see each other
regardless of order. Below, tokens 2-4 form an image span. Changing token 4 changes the
output of token 2 (it looks ahead inside its image) but not of token 1 (text stays
causal).
"""

span_ids = ops.convert_to_tensor([[0, 0, 1, 1, 1, 0] + [0] * (LENGTH - 6)])
changed_value = ops.concatenate([value[:, :4], value[:, 4:5] + 10.0, value[:, 5:]], axis=1)
before = vishwam_keras.ops.dot_product_attention(query, key, value, query_span_ids=span_ids)
after = vishwam_keras.ops.dot_product_attention(query, key, changed_value, query_span_ids=span_ids)
print(f"change token 4 -> token 2 (same image) moves {max_difference(before[:, 2], after[:, 2]):.3f}, "
      f"token 1 (text before) moves {max_difference(before[:, 1], after[:, 1]):.3f}")

"""
The same holds in a whole model. We build a tiny interleaving vision model from a
`MultimodalConfig`, let its preprocessor expand `<start_of_image>` into the image's
placeholder span, and run the backbone on the same prompt with two different images:
the hidden states of the text *before* the image are bit-identical, the rest differ.
"""

vision_config = vishwam_keras.MultimodalConfig(
    embed_dim=WIDTH, num_heads=4, num_kv_heads=2, num_layers=2, intermediate_dim=2 * WIDTH,
    sliding_window_size=8, sliding_window_pattern=2,
    vision_embed_dim=16 if SMALL else 32, vision_num_layers=1, vision_num_heads=2,
    image_size=16 if SMALL else 32, patch_size=4, num_vision_tokens=4,
)
preprocessor = create_preprocessor(vision_config, sequence_length=24)
interleaved = vision_config.build_backbone()
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (32, 32, 3)).astype("uint8") for _ in range(2)]
outputs = []
for image in images:
    inputs = preprocessor.generate_preprocess(
        {"prompts": ["Look: <start_of_image> What is it?"], "images": [[image]]}
    )
    outputs.append(to_numpy(interleaved(inputs)["sequence_output"]))
token_ids = inputs["token_ids"][0]
first_image_token = int(np.argmax(token_ids == interleaved.image_token_id))
print("token ids:", token_ids[: int(inputs["padding_mask"][0].sum())].tolist())
print(f"text before the image (positions < {first_image_token}) differs by "
      f"{np.abs(outputs[0][0, :first_image_token] - outputs[1][0, :first_image_token]).max():.1e}; "
      f"image and later tokens by {np.abs(outputs[0][0, first_image_token:] - outputs[1][0, first_image_token:]).max():.2f}")

"""
### Gated cross-attention

`GatedCrossAttentionBlock` adds `tanh(alpha) * cross_attention(norm(x), vision)` and
then a gated MLP to the text stream. Every `alpha` starts at **zero**, so a freshly
inserted block is exactly the identity: you can add vision to a trained language model
without changing a single output, and the first training steps open the gates.
"""

block = vishwam_keras.GatedCrossAttentionBlock(
    hidden_dim=WIDTH, num_heads=4, head_dim=WIDTH // 4, intermediate_dim=2 * WIDTH
)
text_states = keras.random.normal((2, 6, WIDTH), seed=7)
vision_tokens = keras.random.normal((2, 4, WIDTH), seed=8)
print(f"fresh block: max |output - input| = {max_difference(block(text_states, vision_tokens), text_states):.1e}")
block.attention_alpha.assign(1.0)
print(f"after opening the attention gate: {max_difference(block(text_states, vision_tokens), text_states):.3f}")

"""
### The adaptive gate

With `fusion_type="adaptive_gate"` the scalar gate becomes a per-token one:
`gate = tanh(alpha) * sigmoid(mlp([rms(text), rms(pooled_image)]))`, so the model can
learn which tokens should take more of the image (a noun about the picture more than a
comma). It also starts closed (`alpha = 0`).
"""

fusion = vishwam_keras.AdaptiveModalityFusion(hidden_dim=WIDTH)
update = keras.random.normal((2, 6, WIDTH), seed=9)
pooled_image = keras.random.normal((2, WIDTH), seed=10)
fusion(text_states, update, pooled_image)  # build
print("gate at init:", np.round(to_numpy(fusion.compute_gate(text_states, pooled_image))[0, :, 0], 3))
fusion.alpha.assign(2.0)
fusion.gate_output.kernel.assign(keras.random.normal(fusion.gate_output.kernel.shape, seed=11))
print("a trained gate, per token:",
      np.round(to_numpy(fusion.compute_gate(text_states, pooled_image))[0, :, 0], 3))

adaptive_backbone = vishwam_keras.MultimodalConfig(
    **dict(vision_config.__dict__, fusion_type="adaptive_gate", cross_attn_layers=[1])
).build_backbone()
print("an adaptive_gate backbone has cross-attention blocks after decoder blocks",
      sorted(adaptive_backbone.cross_attention_blocks),
      "and interleaves too:", adaptive_backbone.fusion_type)

"""
## The seed design's names

The project began from a design summary whose names users still type. Each is a thin
name over the classes above, never a second implementation:

| seed name | what it is |
|---|---|
| `GemmaInspiredMultimodalTransformer(config=...)` | a `VishwamCausalLM` subclass: builds `VishwamBackbone` from a `MultimodalConfig` |
| `create_multimodal_model(**config.__dict__)` | the same model from keyword fields |
| `MultimodalConfig(embed_dim=..., num_heads=..., num_kv_heads=..., ...)` | the config; `build_backbone()` maps it to `VishwamBackbone` kwargs |
| `GEMMA_4B_MULTIMODAL_CONFIG`, `GEMMA_12B_MULTIMODAL_CONFIG` | `VISHWAM_4B_CONFIG`, `VISHWAM_12B_CONFIG` |
| `GroupedQueryAttention` | itself: the attention of every decoder block |
| `FlashAttention2`, `SlidingWindowAttention` | `GroupedQueryAttention` subclasses taking the seed's keyword names (`embed_dim`, `num_kv_heads`, `attn_type`, `window_size`), forcing the block-wise kernel |
| `AttentionType.GLOBAL`, `AttentionType.LOCAL_SLIDING` | the layer kinds of `sliding_window_pattern` |
| `MultiScaleAttention`, `SparseAttention`, `CrossModalAttention` | themselves; `create_attention_layer(attention_type=...)` builds any of them |
| `AdvancedRoPE` | `RotaryEmbedding` (the same class object) |
| `QueryKeyNormalization` | two `RMSNorm`s, one for queries and one for keys |
| `SigLIPVisionEncoder`, `AdaptiveModalityFusion` | themselves |
| `AdvancedTrainingConfig`, `SMALL/MEDIUM/LARGE_MODEL_TRAINING_CONFIG` | the training configuration read by `main_training_pipeline` |
| `MultimodalTrainer` | a small wrapper that calls `main_training_pipeline` (`model.fit` with curriculum callbacks) |
| `CurriculumStage`, `AdaptiveLearningRateSchedule`, `MultimodalLoss` | the curriculum stage, the per-stage schedule, the loss weighting used by `VishwamCausalLM.compute_loss` |

The code below checks the table: it is what `isinstance` and `is` say.
"""

seed_checks = {
    "GemmaInspiredMultimodalTransformer is a VishwamCausalLM":
        issubclass(vishwam_keras.GemmaInspiredMultimodalTransformer, vishwam_keras.VishwamCausalLM),
    "AdvancedRoPE is RotaryEmbedding": vishwam_keras.AdvancedRoPE is vishwam_keras.RotaryEmbedding,
    "FlashAttention2 is a GroupedQueryAttention":
        issubclass(vishwam_keras.FlashAttention2, vishwam_keras.GroupedQueryAttention),
    "SlidingWindowAttention is a GroupedQueryAttention":
        issubclass(vishwam_keras.SlidingWindowAttention, vishwam_keras.GroupedQueryAttention),
    "GEMMA_4B_MULTIMODAL_CONFIG is VISHWAM_4B_CONFIG":
        vishwam_keras.GEMMA_4B_MULTIMODAL_CONFIG == vishwam_keras.VISHWAM_4B_CONFIG,
    "GEMMA_12B_MULTIMODAL_CONFIG is VISHWAM_12B_CONFIG":
        vishwam_keras.GEMMA_12B_MULTIMODAL_CONFIG == vishwam_keras.VISHWAM_12B_CONFIG,
}
for claim, holds in seed_checks.items():
    print(f"  {claim}: {holds}")
    assert holds, claim

print(f"Done in {time.time() - START:.0f} s.")
