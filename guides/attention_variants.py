"""
Title: Attention variants and the kernel dispatch
Author: vishwam-keras maintainers
Date created: 2026/11/27
Last modified: 2026/11/27
Description: Every attention layer, `create_attention_layer`, when to use which, and how one function picks splash, cuDNN, block-wise or XLA attention.
Accelerator: None
"""

"""
## Introduction

vishwam-keras has six attention layers. They differ in **which keys each query sees**
(everything before it, a window, a few blocks, another modality) and share everything
else: projections, QK-norm, RoPE, the KV cache, and a single call to
`vishwam_keras.ops.dot_product_attention`, the one place that decides *how* the scores
are computed on the current backend and device.

| name (`create_attention_layer`) | class | a query sees | cost per query |
|---|---|---|---|
| `"gqa"` | `GroupedQueryAttention` | all earlier tokens (or a window) | O(T) |
| `"flash"` | `FlashAttention2` | same, forced onto the block-wise kernel | O(T), O(1) memory |
| `"sliding"` | `SlidingWindowAttention` | the last `window_size` tokens | O(window) |
| `"multi_scale"` | `MultiScaleAttention` | a different window per head group | mixed |
| `"sparse"` | `SparseAttention` | local + first + strided key blocks | O(kept blocks) |
| `"cross_modal"` | `CrossModalAttention` | the other modality's tokens | O(vision tokens) |
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

START = time.time()
keras.utils.set_random_seed(0)
WIDTH, HEADS = (32, 4) if SMALL else (128, 8)
LENGTH = 16 if SMALL else 64


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def max_difference(a, b):
    return float(np.abs(to_numpy(a) - to_numpy(b)).max())


print(f"backend {keras.backend.backend()}, small mode: {SMALL}")

"""
## Building layers by name

`create_attention_layer(kind, **kwargs)` builds any of them. It accepts the seed
design's argument names (`embed_dim`, `num_heads`, `num_kv_heads`, `window_size`, ...)
as well as each class's own.
"""

x = keras.random.normal((2, LENGTH, WIDTH), seed=1)
vision = keras.random.normal((2, 4, WIDTH), seed=2)
layers = {
    "gqa": vishwam_keras.create_attention_layer(
        "gqa", embed_dim=WIDTH, num_heads=HEADS, num_kv_heads=HEADS // 2),
    "flash": vishwam_keras.create_attention_layer(
        "flash", embed_dim=WIDTH, num_heads=HEADS, num_kv_heads=HEADS // 2),
    "sliding": vishwam_keras.create_attention_layer(
        "sliding", embed_dim=WIDTH, num_heads=HEADS, num_kv_heads=HEADS // 2, window_size=4),
    "multi_scale": vishwam_keras.create_attention_layer(
        "multi_scale", embed_dim=WIDTH, num_heads=HEADS, num_kv_heads=HEADS // 2,
        window_sizes=[4, -1]),
    "sparse": vishwam_keras.create_attention_layer(
        "sparse", embed_dim=WIDTH, num_heads=HEADS, num_kv_heads=HEADS // 2, block_size=4,
        num_local_blocks=2, num_global_blocks=1),
    "cross_modal": vishwam_keras.create_attention_layer(
        "cross_modal", embed_dim=WIDTH, num_heads=HEADS),
}
for name, layer in layers.items():
    output = layer(x, vision) if name == "cross_modal" else layer(x)
    print(f"  {name:12s} {type(layer).__name__:22s} output {tuple(output.shape)}, "
          f"{layer.count_params():,} parameters")

"""
All self-attention variants are `GroupedQueryAttention` subclasses with the same
weights, so they are interchangeable in a checkpoint. For example, the block-wise
`"flash"` layer computes what `"gqa"` computes, and a `"sparse"` layer whose local
blocks cover the whole sequence is plain causal attention:
"""

gqa, flash = layers["gqa"], layers["flash"]
flash.set_weights(gqa.get_weights())
print(f"flash vs gqa, same weights: max difference {max_difference(flash(x), gqa(x)):.1e}")
dense_sparse = vishwam_keras.SparseAttention(
    embed_dim=WIDTH, num_heads=HEADS, num_kv_heads=HEADS // 2, block_size=4,
    num_local_blocks=LENGTH // 4,
)
dense_sparse(x)
dense_sparse.set_weights(gqa.get_weights())
print(f"sparse with every block kept vs gqa: max difference {max_difference(dense_sparse(x), gqa(x)):.1e}")
sliding = layers["sliding"]
sliding.set_weights(gqa.get_weights())
print(f"sliding (window 4) vs gqa: max difference {max_difference(sliding(x), gqa(x)):.2f} "
      "(they differ once a query has more than 4 keys)")

"""
## When to use which

- **`"gqa"`**: the default. Global layers of every preset, and local layers with
  `sliding_window_size=...`; the dispatch picks the fastest kernel for you.
- **`"flash"`** (`FlashAttention2`): the same layer pinned to the block-wise
  online-softmax kernel (Dao, 2023). Memory stays flat in sequence length on any
  backend; use it for long sequences on CPU or when you want the same kernel everywhere.
  On TPU/GPU pass `attention_implementation=None` to let the dispatch choose splash or
  cuDNN instead.
- **`"sliding"`**: local attention only; the block-wise kernel visits just the key
  blocks inside the window, and the decode cache is a ring buffer of `window_size`.
- **`"multi_scale"`**: head groups with different windows (`[64, 256, 1024, -1]` by
  default; `-1` is global) in one layer: a cheap way to mix local detail and global
  context without alternating layer types.
- **`"sparse"`**: block-sparse causal attention (Child et al., 2019): each query block
  sees its `num_local_blocks` recent blocks, the first `num_global_blocks` and every
  `stride`-th block. Cost grows with the kept blocks, not with T^2.
- **`"cross_modal"`**: text tokens attend to vision tokens (optionally both ways with
  `bidirectional=True`); used inside `GatedCrossAttentionBlock`.
"""

both_ways = vishwam_keras.CrossModalAttention(
    hidden_dim=WIDTH, num_heads=HEADS, head_dim=WIDTH // HEADS, vision_dim=16, bidirectional=True
)
text_update, vision_update = both_ways(x, vision[..., :16])
print(f"bidirectional cross-modal: text update {tuple(text_update.shape)}, "
      f"vision update {tuple(vision_update.shape)}")

"""
## The dispatch point

Every layer above ends in one call:

```python
vishwam_keras.ops.dot_product_attention(
    query, key, value, causal=True, sliding_window=None, logit_soft_cap=None,
    padding_mask=None, query_span_ids=None, implementation=None)
```

The mask is *described* (causal, window, padding, bidirectional spans, positions), not
passed as a dense `T x T` matrix, so each implementation builds what it needs:

| backend / device | automatic choice | why |
|---|---|---|
| JAX on TPU | `"splash"` (Pallas splash attention) | static block-sparse masks, no T x T in memory |
| JAX on GPU | `"cudnn"` (`jax.nn.dot_product_attention`) where it applies: bf16/fp16, head_dim % 8 == 0, no soft cap, padding or spans | fused flash attention |
| any backend, long sequences (q_len >= 128 and kv_len >= 2048) or a window <= kv_len / 4 | `"blockwise"` (FlashAttention-2 in `keras.ops`) | memory flat in T; skips blocks outside the window |
| torch, otherwise, no logit soft cap | `"torch_sdpa"` (`torch.nn.functional.scaled_dot_product_attention` with the dense mask) | torch's fused kernel: on CPU the eager einsums and masks cost 2x at T = 1024 |
| otherwise (short sequences, decode steps) | `"xla"` (einsum softmax with a dense mask) | the reference; cheapest for small T |

A forced implementation the backend or device cannot run raises a `ValueError` naming
what is available; one that cannot express a particular mask (cuDNN with padding, say)
falls back and logs why. `vishwam_keras.ops.last_attention_implementation()` says what
the last call chose (recorded at trace time, so under `jit` it is what the compiled
function runs); `vishwam_keras.ops.set_attention_logging(True)` (or
`VISHWAM_ATTENTION_LOG=1`) logs every choice, and
`vishwam_keras.ops.available_implementations()` lists what runs natively here.
"""

print("native here:", vishwam_keras.ops.available_implementations())
q = keras.random.normal((1, 256, 4, 16), seed=3)
k = keras.random.normal((1, 256, 2, 16), seed=4)
v = keras.random.normal((1, 256, 2, 16), seed=5)
for sliding_window in (None, 32):
    out = vishwam_keras.ops.dot_product_attention(q, k, v, sliding_window=sliding_window)
    print(f"T=256, window {sliding_window}: automatic choice -> "
          f"{vishwam_keras.ops.last_attention_implementation()}")
reference = vishwam_keras.ops.dot_product_attention(q, k, v, sliding_window=32, implementation="xla")
blockwise = vishwam_keras.ops.dot_product_attention(
    q, k, v, sliding_window=32, implementation="blockwise", block_size_q=64, block_size_kv=32
)
print(f"blockwise vs xla (window 32): max difference {max_difference(blockwise, reference):.1e}")
try:
    vishwam_keras.ops.dot_product_attention(q, k, v, implementation="splash")
except ValueError as error:
    print("splash here ->", str(error).split(". ")[0])

"""
On JAX you can also run the splash kernel on a CPU in Pallas interpret mode
(`implementation="splash", interpret=True`): slow, but it is how the tests check the
TPU path against the reference without a TPU.

## How much it matters

`benchmarks/attention.py` times a forward and a forward+backward pass of one attention
call (batch 1, 8 heads, head_dim 64, float32, causal, JAX on a 2-core CPU) for our
`xla` reference, `blockwise` with and without a 1024-token window, and Keras' own
`ops.dot_product_attention` with a dense `T x T` mask (`keras dense`, what KerasHub's
Gemma 3 does). From `benchmarks/RESULTS_attention.md` (2026-11-27, two runs on a shared
machine: times vary 2-3x between the runs, so both are given as run 1 / run 2; memory
does not vary):

| | xla | blockwise | blockwise, window 1024 | keras dense | keras dense, window 1024 |
|---|---|---|---|---|---|
| T = 2048 forward, ms | 568 / 472 | 192 / 107 | 240 / 240 | 494 / 723 | 357 / 782 |
| T = 8192 forward, ms | 6971 / 6460 | 1143 / 2164 | 475 / 582 | 6927 / 18321 | 6684 / 12923 |
| T = 16384 forward, ms | 14492 / 86729 | 8468 / 10499 | 1176 / 1602 | 58269 / - | 68133 / - |
| T = 8192 forward, XLA temporaries, MiB | 4112 | 57 | 57 | 4096 | 4096 |
| T = 8192 forward+backward, XLA temporaries, MiB | 8721 | 81 | 81 | 6160 | 6160 |
| T = 16384 forward+backward, XLA temporaries, MiB | 34850 (not run) | 162 | 162 | 24609 (not run) | 24609 (not run) |

Block-wise attention needs 1-2% of the dense paths' temporary memory at 8k, and its
backward pass (the FlashAttention-2 custom gradient) grows the same way; with a window it
stays almost flat in T. The other benchmark tables are listed in `guides/benchmarks.md`.

A small measurement of our own (times on a shared CPU are noisy; the shapes here are
far below where block-wise pays off unless a window is set):
"""

if SMALL:
    print("(small mode compiles without XLA optimisations: the times below are not representative)")


def median_ms(function, repeats=3):
    to_numpy(function())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        to_numpy(function())
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


length = 512 if SMALL else 2048
q = keras.random.normal((1, length, 4, 32), seed=6)
k = keras.random.normal((1, length, 4, 32), seed=7)
v = keras.random.normal((1, length, 4, 32), seed=8)
for implementation in ("xla", "blockwise"):
    for sliding_window in (None, 64):
        ms = median_ms(lambda: vishwam_keras.ops.dot_product_attention(
            q, k, v, sliding_window=sliding_window, implementation=implementation))
        print(f"  T={length} {implementation:9s} window {str(sliding_window):4s}: {ms:8.1f} ms")

results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks",
                       "RESULTS_attention.md")
if os.path.exists(results):  # the first forward-time table of the results file, as is
    with open(results) as f:
        lines = f.read().split("forward: time, ms (median)", 1)[-1].strip().splitlines()
    end = next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))
    table = lines[:end]
    print("benchmarks/RESULTS_attention.md, its first forward-time table (ms):\n" + "\n".join(table))

print(f"Done in {time.time() - START:.0f} s.")
