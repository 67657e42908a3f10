"""
Title: Distributed training with keras.distribution
Author: vishwam-keras maintainers
Date created: 2026/11/27
Last modified: 2026/11/27
Description: Data and model parallelism for Vishwam models, the layout map, how much memory each device needs, and going multi-host.
Accelerator: None (runs on virtual CPU devices; the same code runs on TPU and GPU)
"""

"""
## Introduction

Keras 3 distributes a model with two objects from `keras.distribution`:

- a **`DeviceMesh`**: the devices arranged in a grid with named axes, here
  `("batch", "model")`;
- a **`LayoutMap`**: for each weight (matched by a regex on its path) which of its axes
  are split over which mesh axis.

`DataParallel` replicates every weight and splits each batch over the devices;
`ModelParallel` shards weights as the layout map says (and the batch over the `"batch"`
axis). Set one with `keras.distribution.set_distribution(...)` **before** building the
model, and `fit`, `predict` and `generate` run sharded: XLA inserts the communication.
`keras.distribution` currently runs on the **JAX** backend.

vishwam-keras adds ready-made pieces:

- `vishwam_keras.data_parallel(devices=None)`;
- `vishwam_keras.model_parallel(preset_or_config, mesh_shape=(batch, model))`;
- `vishwam_keras.get_layout_map(config, mesh)` / `VishwamBackbone.get_layout_map(mesh)`:
  a layout map that places *every* weight and never fails on head counts that do not
  divide the model axis (the failure of KerasHub's Gemma map with few KV heads);
- `vishwam_keras.memory_per_device(...)`: how much memory weights, gradients and
  optimizer states take per device.

To try this on a laptop we ask XLA for several virtual CPU devices. This must happen
before JAX starts, so it is the first thing the program does.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SMALL = os.environ.get("VISHWAM_GUIDE_SMALL", "0") not in ("", "0")
NUM_DEVICES = 4 if SMALL else 8
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    flags += f" --xla_force_host_platform_device_count={NUM_DEVICES}"
os.environ["XLA_FLAGS"] = flags

import time

import keras
import numpy as np

import vishwam_keras

START = time.time()
BACKEND = keras.backend.backend()
print(f"backend {BACKEND}, small mode: {SMALL}")

"""
## How much memory does training need?

Before choosing a mesh, count. `memory_per_device` adds up weights, gradients and
optimizer slots (AdamW keeps two per weight) for the preset configs, in the variables'
dtype (float32 under a `mixed_*` policy), and divides by the devices when the weights
are sharded. Activations, the KV cache and compiler workspace come on top.
"""

print("bfloat16 weights and AdamW slots, sharded over 8 devices:")
print(vishwam_keras.memory_per_device(num_devices=8))
print("\nmixed_bfloat16 (float32 variables), replicated (data parallel) on 8 devices:")
print(vishwam_keras.memory_per_device(num_devices=8, dtype="mixed_bfloat16", sharded=False))

"""
The 12B model needs about 90 GiB for weights and optimizer in bfloat16: it does not fit
a single 80 GiB accelerator even before activations, but sharded over 8 devices each
holds about 11 GiB. Data parallelism alone would not help; model parallelism does.

## The layout map

`get_layout_map(config, mesh)` reads every weight's shape (building the model
abstractly, without allocating anything) and places it Megatron-style: query/key/value
kernels `(d, heads, head_dim)` shard their heads when the head count divides the model
axis, else the hidden dimension `d`; output projections the same way on the other side;
feed-forward `gate`/`up` shard the intermediate dimension and `down` its input; the
embedding shards `d`; norms, biases and scalar gates are replicated. Keys are regexes on
`variable.path`.

The mesh only needs axis names and sizes here, so the device names need not exist: this
part runs on any backend. The 4B preset has 8 query heads but 4 KV heads, so on a model
axis of 8 its KV kernels cannot split their heads and shard the hidden dimension instead
(small mode uses the tiny config, with 4 query and 2 KV heads, and the same outcome):
"""

fake_devices = [f"cpu:{i}" for i in range(8)]
mesh = keras.distribution.DeviceMesh((1, 8), ("batch", "model"), fake_devices)
config_name = "tiny" if SMALL else "vishwam_4b"
layout_map = vishwam_keras.get_layout_map(config_name, mesh)
for path in ("token_embedding/embeddings",
             "decoder_block_0/attention/query/kernel",
             "decoder_block_0/attention/key/kernel",
             "decoder_block_0/attention/attention_output/kernel",
             "decoder_block_0/feedforward/gate/kernel",
             "decoder_block_0/feedforward/down/kernel",
             "decoder_block_0/pre_attention_norm/scale"):
    print(f"  {config_name}: {path:50s} -> {tuple(layout_map[path].axes)}")

"""
`VishwamBackbone.get_layout_map(mesh)` is the KerasHub-style classmethod. Without a
config it cannot check sizes, so it gives rules for the text stack that hold for every
shipped config (it shards hidden and intermediate dimensions, never heads); pass
`config=` to get the size-checked map above.
"""

class_map = vishwam_keras.VishwamBackbone.get_layout_map(mesh)
print("classmethod, no config:", tuple(class_map["decoder_block_3/attention/key/kernel"].axes))

"""
## Running it

The rest needs devices, which `keras.distribution` reaches through JAX.
"""

if BACKEND != "jax":
    print(f"keras.distribution runs on the JAX backend; skipping the sharded runs on {BACKEND}.")
else:
    devices = keras.distribution.list_devices()
    print(f"{len(devices)} devices: {devices}")
    rng = np.random.default_rng(0)
    VOCABULARY, LENGTH, BATCH = 8192, 16, 2 * len(devices)
    tokens = rng.integers(4, VOCABULARY, (BATCH * 4, LENGTH + 1)).astype("int32")
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones_like(tokens[:, :-1])}
    y = tokens[:, 1:]
    model_config = vishwam_keras.TINY_CONFIG if SMALL else vishwam_keras.MultimodalConfig(
        embed_dim=256, num_heads=8, num_kv_heads=4, head_dim=32, num_layers=4,
        intermediate_dim=1024, sliding_window_size=8, sliding_window_pattern=2,
    )

    def train_and_generate(title):
        keras.utils.set_random_seed(0)
        model = vishwam_keras.VishwamCausalLM(model_config.build_backbone())
        model.compile(
            optimizer=keras.optimizers.AdamW(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            sampler="greedy",
        )
        history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        prompt = {"token_ids": np.zeros((BATCH, LENGTH), "int32"),
                  "padding_mask": np.zeros((BATCH, LENGTH), "int32")}
        prompt["token_ids"][:, :3] = tokens[:BATCH, :3]
        prompt["padding_mask"][:, :3] = 1
        generated = np.asarray(model.generate(prompt, stop_token_ids=None)["token_ids"])
        print(f"{title}: loss {history.history['loss'][-1]:.3f}, generated {generated[0, :8].tolist()}...")
        return model

    """
    ### Data parallel

    Every device holds all weights; each batch of `BATCH` examples is split over the
    devices and the gradients are averaged.
    """

    keras.distribution.set_distribution(vishwam_keras.data_parallel())
    model = train_and_generate("data parallel")
    kernel = model.backbone.transformer_layers[0].attention.query_dense.kernel
    print("  query kernel sharding:", kernel.value.sharding.spec, "(replicated)")

    """
    ### Model parallel

    A `(batch, model)` mesh of `(2, NUM_DEVICES / 2)`: weights sharded over the model
    axis by the layout map, the batch over the other. `model_parallel` builds the mesh
    and the map for a config (or a preset name); the model is then built as usual.
    """

    mesh_shape = (2, len(devices) // 2)
    keras.distribution.set_distribution(vishwam_keras.model_parallel(model_config, mesh_shape=mesh_shape))
    model = train_and_generate(f"model parallel {mesh_shape}")
    attention = model.backbone.transformer_layers[0].attention
    for name, weight in (("query", attention.query_dense.kernel), ("key", attention.key_dense.kernel),
                         ("down", model.backbone.transformer_layers[0].feedforward.down.kernel)):
        shard = weight.value.addressable_shards[0].data.shape
        print(f"  {name:5s} kernel {tuple(weight.shape)} sharded {weight.value.sharding.spec}, "
              f"one device holds {tuple(shard)}")
    keras.distribution.set_distribution(None)

"""
## Multi-host

On a TPU pod slice or a multi-node GPU cluster, every host runs the same program. Start
JAX's distributed runtime first, on every host, then build the distribution exactly as
above; `list_devices()` now returns the devices of all hosts, and each host feeds its
share of every batch:

```python
import jax

jax.distributed.initialize(
    coordinator_address="10.0.0.1:1234",  # host 0
    num_processes=4,
    process_id=int(os.environ["HOST_INDEX"]),
)  # on Cloud TPU, SLURM or Open MPI, `jax.distributed.initialize()` finds these itself
# (equivalently: keras.distribution.initialize("10.0.0.1:1234", num_processes=4, process_id=...))

devices = keras.distribution.list_devices()            # every device of every host
keras.distribution.set_distribution(
    vishwam_keras.model_parallel("vishwam_12b", mesh_shape=(len(devices) // 8, 8))
)
model = vishwam_keras.VishwamCausalLM.from_preset("vishwam_12b")
model.fit(per_host_dataset, ...)   # each host reads a different shard of the data
```

Keep the model axis inside a host (8 accelerators on one fast interconnect) and use the
batch axis across hosts: model parallelism talks every layer, data parallelism once per
step.
"""

print(f"Done in {time.time() - START:.0f} s.")
