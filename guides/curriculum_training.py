"""
Title: Curriculum training for a multimodal model
Author: vishwam-keras maintainers
Date created: 2026/11/27
Last modified: 2026/11/27
Description: Three training stages with freezing, data mixtures, the multimodal loss, per-stage schedules, remat, mixed precision, checkpoints and resume, in one call.
Accelerator: None
"""

"""
## Introduction

Training a vision-language model from scratch in one go tends to go badly: the randomly
initialised vision encoder floods a language model that cannot yet read, and the
gradients of the two halves fight. The usual answer is a **curriculum**:

1. **`text_pretraining`**: train the language model on text; vision encoder, projector,
   fusion layers and the contrastive head are frozen (and unused).
2. **`vision_alignment`**: freeze the language model; train the vision encoder, projector,
   fusion and contrastive head on image-text pairs, so images land where the language
   model can read them.
3. **`multimodal_finetuning`**: unfreeze everything and train on a mixture of text and
   image-text data.

Freezing the language model in stage 2 (LLaVA's recipe) assumes it already knows the
words the images should map to. When it has only read other text (our Shakespeare model
has never seen "sneaker"), `default_curriculum(..., freeze_language_model_in_alignment=False)`
trains everything in stage 2 (PaliGemma's recipe); `vishwam_tiny_fashion` is trained that
way (`benchmarks/fashion_training/README.md` has the measurements behind the choice).

`vishwam_keras.main_training_pipeline(train_dataset, config)` runs all of it with one
call: it builds the model from `config.model`, compiles it with a stage-aware learning
rate schedule, runs one `fit` per stage (freezing and unfreezing in between), writes
checkpoints atomically, and **resumes** from the last checkpoint when you rerun the same
call after a crash.

We train on **FashionScenes**: 56 x 56 grayscale 2 x 2 grids of Fashion-MNIST items,
with captions ("a sneaker and a bag above a dress and a coat") and questions ("How many
shoes are there?" - "two") computed from the labels, plus Shakespeare for the text
stage. Fashion-MNIST is read offline from Debian's `dataset-fashion-mnist` package
(`/usr/share/datasets/fashion-mnist`), `$VISHWAM_DATA_DIR` or a local folder; nothing is
downloaded. If it is missing, this guide explains and stops.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SMALL = os.environ.get("VISHWAM_GUIDE_SMALL", "0") not in ("", "0")

import csv
import shutil
import sys
import tempfile
import time

import keras
import numpy as np

import vishwam_keras

START = time.time()
print(f"backend {keras.backend.backend()}, small mode: {SMALL}")

"""
## The data

`vishwam_keras.data.pipelines` builds one `tf.data` pipeline per stage from the bundled
Shakespeare text and FashionScenes. Every element is what the model's preprocessor takes:
`prompts`, `responses` (only response tokens carry loss), and one image slot (`images`
`(batch, 1, 56, 56, 1)` uint8, `image_mask` 0 for text examples), so text and image
examples can be mixed in one batch.
"""

from vishwam_keras.data import pipelines

try:
    from vishwam_keras.data import fashion_mnist

    fashion_mnist.load_fashion_mnist("test")
except (FileNotFoundError, OSError) as error:
    print(
        "SKIPPED: this guide trains on FashionScenes, built from Fashion-MNIST, which was not "
        f"found ({error}).\nInstall Debian's `dataset-fashion-mnist` package "
        "(apt-get install dataset-fashion-mnist) or point $VISHWAM_DATA_DIR at a folder with "
        "the four idx files, then rerun."
    )
    sys.exit(0)

BATCH_SIZE = 4 if SMALL else 8
SEQUENCE_LENGTH = 32 if SMALL else 48
NUM_SCENES = 200 if SMALL else None  # None: the full 50,000 training scenes

"""
### Data mixtures

Each stage has its own dataset. The third one mixes sources *per example* with fixed
sampling weights (stateless draws, so a seed gives the same batches every run): here 20%
Shakespeare, 30% captions, 50% visual questions, mirroring the default curriculum's
`data_mixture={"text": 0.2, "image_text": 0.8}`.

(A stage's `data_mixture` is used by `vishwam_keras.run_curriculum` when you give it
datasets keyed by *source* instead of by stage name; it then mixes them with
`tf.data.Dataset.sample_from_datasets`. `main_training_pipeline` takes one dataset per
stage, as here.)
"""

datasets = pipelines.stage_datasets(
    BATCH_SIZE, num_scenes=NUM_SCENES, repeat=True, seed=0,
    mixture={"text": 0.2, "caption": 0.3, "vqa": 0.5},
)
for stage_name, dataset in datasets.items():
    batch = next(iter(dataset))
    print(f"{stage_name}: images {tuple(batch['images'].shape)}, "
          f"prompt {batch['prompts'][0].numpy().decode()!r} -> "
          f"{batch['responses'][0].numpy().decode()[:50]!r}")

"""
## The stages

`default_curriculum(total_steps)` returns the three `CurriculumStage`s. A stage names the
layers it trains or freezes with `fnmatch` patterns on layer names (a pattern with a `/`
matches the layer's path): the deepest matching pattern wins, and `frozen` beats
`trainable` on the same layer. Stages are plain data (`to_dict`/`from_dict`), so they can
live in a YAML or JSON config.
"""

TOTAL_STEPS = 12 if SMALL else 300
stages = vishwam_keras.default_curriculum(TOTAL_STEPS, fractions=(0.34, 0.33, 0.33))
for stage in stages:
    print(f"  {stage.name:22s} steps {stage.steps:4d}  modalities {stage.modalities}\n"
          f"  {'':22s} trainable {stage.trainable}  frozen {stage.frozen}")

"""
## The multimodal loss

On text-only batches the loss is the token cross-entropy on response tokens. On batches
with images, `VishwamCausalLM` adds SigLIP's pairwise **sigmoid contrastive loss**
between each image's pooled embedding and its text's (Zhai et al., 2023):
`logits = z_img @ z_txt.T * t + b`, `loss = -mean(log_sigmoid(labels * logits))` with
`labels = 2 * eye - 1`. The two are summed by `MultimodalLoss` with learned
**uncertainty weights** (Kendall et al., 2018): `sum_i exp(-s_i) * L_i + s_i`, so the model
decides how much each task counts. `fit` logs `language_modeling_loss` and
`contrastive_loss` separately.
"""

rng = np.random.default_rng(0)
image_embeddings = rng.normal(size=(4, 16)).astype("float32")
matching_text = image_embeddings + 0.1 * rng.normal(size=(4, 16)).astype("float32")
for name, text_embeddings in (("matching pairs", matching_text),
                              ("shuffled pairs", matching_text[::-1])):
    loss = vishwam_keras.sigmoid_contrastive_loss(
        image_embeddings, text_embeddings, log_temperature=np.log(10.0), bias=-10.0)
    print(f"sigmoid contrastive loss, {name}: {float(loss):.3f}")
weighting = vishwam_keras.MultimodalLoss()
parts = weighting({"language_modeling": 2.0, "contrastive": 1.0})
print("uncertainty-weighted total at initialisation:", float(parts["loss"]))

"""
A stage can lean on one loss or switch it off with `loss_scales`, a factor on that loss's
whole term (`{"contrastive": 0.0}` drops it, `{"contrastive": 10.0}` multiplies it by ten;
the learned weights keep their meaning). The uncertainty weights settle at `1 / L_i`, so a
contrastive loss stuck near its chance value (~3.7 at batch 16) ends up with a tenth of
the weight of a language-model loss of 0.3; during alignment, where every pair is a
caption and its image, we scale it up. `CurriculumCallback` applies each stage's factors
when it enters the stage.
"""

weighting.set_loss_scales({"contrastive": 10.0})
parts = weighting({"language_modeling": 2.0, "contrastive": 1.0})
print("with the contrastive term scaled by 10:", float(parts["loss"]))
weighting.set_loss_scales(None)
stages[1] = vishwam_keras.CurriculumStage.from_dict(
    {**stages[1].to_dict(), "loss_scales": {"contrastive": 10.0}}
)
print(f"  {stages[1].name}: loss_scales {stages[1].loss_scales}")

"""
## Schedules

Each stage restarts the learning rate: a linear warm-up, then a cosine decay to the end
of the stage (`AdaptiveLearningRateSchedule.from_stages`). Restarting matters because
each stage trains a different set of weights, with a fresh optimizer state.
"""

schedule = vishwam_keras.AdaptiveLearningRateSchedule.from_stages(
    stages, 2e-3, warmup_steps=2 if SMALL else 20)
boundaries = np.cumsum([s.steps for s in stages])
probe = sorted({0, 1, 2, int(boundaries[0]) - 1, int(boundaries[0]), int(boundaries[0]) + 2,
                int(boundaries[1]), TOTAL_STEPS - 1})
print("learning rate:", ", ".join(f"step {s}: {float(schedule(s)):.1e}" for s in probe))

"""
## Remat and mixed precision

Two switches of `AdvancedTrainingConfig` trade compute for memory:

- `gradient_checkpointing=True` calls `model.backbone.enable_rematerialization()`: each
  decoder block runs through `keras.remat`, so its activations are recomputed in the
  backward pass instead of stored (one block's activations live at a time instead of
  every layer's). The update is the same as without it; only memory and time change.
- `use_mixed_precision=True` trains under the `mixed_bfloat16` policy: weights stay
  float32, activations run in bfloat16; the loss, softmax, norms and soft caps stay
  float32.

Both are on in the seed's `MEDIUM_MODEL_TRAINING_CONFIG` and
`LARGE_MODEL_TRAINING_CONFIG` (4B and 12B). On a CPU neither saves time, but they work
the same, so remat is on in both modes of this guide and mixed precision in the
full-size run.

## Training, with a crash and a resume

The model is a small `MultimodalConfig` (in full mode `FASHION_TINY_CONFIG`, the
3.7M-parameter model of the `vishwam_tiny_fashion` preset, with a 3-layer ViT on 7 x 7
patches). We checkpoint every few
steps, then simulate a crash in the middle of the second stage with a callback that
raises.
"""

if SMALL:
    model_config = vishwam_keras.MultimodalConfig(
        embed_dim=64, num_heads=4, num_kv_heads=2, num_layers=2, intermediate_dim=128,
        sliding_window_size=16, sliding_window_pattern=2, final_logit_soft_cap=30.0,
        vision_embed_dim=32, vision_num_layers=1, vision_num_heads=2,
        image_size=56, patch_size=14, vision_pooling="avg", num_vision_tokens=4, num_channels=1,
    )
else:
    model_config = vishwam_keras.FASHION_TINY_CONFIG

workdir = tempfile.mkdtemp(prefix="vishwam_curriculum_")
config = vishwam_keras.AdvancedTrainingConfig(
    model=model_config,
    curriculum_stages=stages,
    batch_size=BATCH_SIZE,
    sequence_length=SEQUENCE_LENGTH,
    learning_rate=2e-3,
    warmup_steps=2 if SMALL else 20,
    use_mixed_precision=not SMALL,
    gradient_checkpointing=True,
    checkpoint_dir=os.path.join(workdir, "checkpoints"),
    checkpoint_every=2 if SMALL else 25,
    log_dir=os.path.join(workdir, "logs"),
    seed=0,
)
CRASH_AT = int(boundaries[0]) + (2 if SMALL else 50)  # inside stage 2


class SimulatedCrash(Exception):
    pass


class CrashAt(keras.callbacks.Callback):
    """Raises once the optimizer has taken `step` steps: a stand-in for a lost machine."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations.value)) >= self.step:
            raise SimulatedCrash(f"simulated crash after step {self.step}")


verbose = 2
try:
    vishwam_keras.main_training_pipeline(datasets, config, callbacks=[CrashAt(CRASH_AT)], verbose=verbose)
except SimulatedCrash as crash:
    print(f"\n*** {crash}; checkpoints: {sorted(os.listdir(config.checkpoint_dir))}\n")

"""
Rerunning **the same call** (here without the crashing callback) finds the latest
checkpoint, freezes the model as that stage does, restores weights, optimizer state and
step counter, skips the batches already seen, and carries on. Preemptible machines need
nothing more than a loop around the training command.
"""

result = vishwam_keras.main_training_pipeline(datasets, config, verbose=verbose)
model = result.model
print(f"resumed from step {result.resumed_from_step}; optimizer now at step "
      f"{int(keras.ops.convert_to_numpy(model.optimizer.iterations.value))} of {TOTAL_STEPS}")

"""
## What the run left behind

`log_dir` holds a per-step CSV (loss and its parts, learning rate, stage) and a plot of
the loss per stage; `result.history` merges the stages' `History` objects.
"""

with open(result.log_path) as f:
    rows = list(csv.DictReader(f))
columns = [c for c in ("step", "stage", "loss", "language_modeling_loss", "contrastive_loss")
           if c in rows[0]]
for row in rows[:: max(1, len(rows) // 6)]:
    print("  " + "  ".join(f"{c}={row[c][:8]}" for c in columns))
print("loss plot:", result.plot_path)

"""
Finally, the model captions a scene. After a dozen steps (small mode) it has learned
nothing yet; after the full run's 300 steps it writes caption-shaped text. The recipe
behind the `vishwam_tiny_fashion` preset (`python -m vishwam_keras demo --train`, or
`vishwam_keras.training.pipeline.train_fashion_preset`) is the same call with 1,200
steps at batch size 16.
"""

scene = next(iter(datasets["vision_alignment"]))
image = scene["images"][0, 0].numpy()
model.compile(sampler="greedy")
caption = model.generate(
    {"prompts": ["<start_of_image> Caption:"], "images": [[image]]},
    max_length=SEQUENCE_LENGTH,
)
print("model caption:", repr(caption[0] if isinstance(caption, list) else caption))
print("true caption: ", repr(scene["responses"][0].numpy().decode()))

shutil.rmtree(workdir, ignore_errors=True)
print(f"Done in {time.time() - START:.0f} s.")
