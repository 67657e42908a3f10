"""The demos behind `python -m vishwam_keras demo`: the trained FashionScenes model, and text.

`run_demo` loads the `vishwam_tiny_fashion` preset, captions test scenes and answers their
questions (a PNG grid), then scores VQA, captions and retrieval with `evaluation.py`;
`run_text_demo` trains a tiny model on Shakespeare for a minute, then samples from it.
"""

import os
import textwrap
import time

import keras
import numpy as np

DEMO_PROMPTS = ["ROMEO:", "To be, or not", "The king"]
FASHION_PRESET = "vishwam_tiny_fashion"
FASHION_SEQUENCE_LENGTH = 48  # `train_fashion_preset`'s shortest (generation is not bound by it)
TRAIN_COMMAND = "python -m vishwam_keras demo --train"


# === The FashionScenes demo ===
def train_fashion_preset(**kwargs):
    """Train `vishwam_tiny_fashion` through the curriculum (`training.pipeline.train_fashion_preset`)."""
    from vishwam_keras.training.pipeline import train_fashion_preset as train

    return train(**kwargs)


def load_fashion_model(preset=FASHION_PRESET, allow_random=True):
    """`(model, trained)`: the preset with its weights, or a random `FASHION_TINY_CONFIG` model.

    A missing preset (or one without weights) prints how to train it; with
    `allow_random=False` it raises `FileNotFoundError` instead of falling back.
    """
    from vishwam_keras.models import presets
    from vishwam_keras.models.causal_lm import VishwamCausalLM

    try:
        path = presets.resolve_preset(preset)
    except ValueError:
        path = None
    if path is not None and presets.has_weights(path):
        return VishwamCausalLM.from_preset(path), True
    message = (
        f"The preset {preset!r} is not here or has no trained weights. Train it through "
        f"the curriculum (it saves the preset) with:\n    {TRAIN_COMMAND}\n"
    )
    if not allow_random:
        raise FileNotFoundError(message)
    print(message + "Meanwhile the demo runs on a RANDOMLY INITIALISED model of the same size: "
          "its captions and answers are noise, its scores should sit at or below chance.\n")
    return random_fashion_model(), False


def random_fashion_model(sequence_length=FASHION_SEQUENCE_LENGTH):
    """An untrained model of the preset's architecture (`FASHION_TINY_CONFIG`) with its preprocessor."""
    from vishwam_keras.config import FASHION_TINY_CONFIG
    from vishwam_keras.models.factory import create_multimodal_model, create_preprocessor

    preprocessor = create_preprocessor(FASHION_TINY_CONFIG, sequence_length)
    return create_multimodal_model(FASHION_TINY_CONFIG, preprocessor=preprocessor)


def _shown_questions(scenes, predictions, num_scenes, per_scene=4):
    """Per shown scene, up to `per_scene` `(question, answer, truth)`: one of each type first.

    The answer is the completion's `final_answer` (a caption-first model's description
    of the scene is left out: the scene's caption is shown above its questions)."""
    from vishwam_keras.evaluation import final_answer, flatten_questions

    shown = [[] for _ in range(num_scenes)]
    seen_types = [set() for _ in range(num_scenes)]
    for (scene, qa), prediction in zip(flatten_questions(scenes), predictions):
        if scene < num_scenes and qa.question_type not in seen_types[scene] and len(shown[scene]) < per_scene:
            seen_types[scene].add(qa.question_type)
            shown[scene].append((qa.question, final_answer(prediction).strip(), qa.answer))
    return shown


def save_scene_grid(images, captions, true_captions, questions, output, title=""):
    """A matplotlib PNG: each scene with the model's caption and answers written under it.

    Args:
        images: uint8 `(N, H, W, 1)`.
        captions, true_captions: lists of N str.
        questions: N lists of `(question, model answer, true answer)`.
        output: str. The PNG's path.
        title: str. The figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(images))
    rows = -(-len(images) // columns)
    figure = plt.figure(figsize=(4.4 * columns, 6.2 * rows))
    # Per scene row: the images, then a text band of the same height ratio below them.
    grid = figure.add_gridspec(2 * rows, columns, height_ratios=[3.2, 2.6] * rows, hspace=0.05)
    for index in range(len(images)):
        row, column = divmod(index, columns)
        image_axis = figure.add_subplot(grid[2 * row, column])
        image_axis.imshow(np.asarray(images[index])[..., 0], cmap="gray", vmin=0, vmax=255)
        image_axis.set_title(f"test scene {index}", fontsize=10)
        image_axis.axis("off")
        text_axis = figure.add_subplot(grid[2 * row + 1, column])
        text_axis.axis("off")
        text_axis.text(0.0, 1.0, "\n".join(_scene_lines(captions[index], true_captions[index], questions[index])),
                       transform=text_axis.transAxes, fontsize=7.5, va="top", ha="left", family="monospace")
    figure.suptitle(title, fontsize=12)
    figure.savefig(output, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return output


def _scene_lines(caption, true_caption, questions):
    lines = _wrapped(f"model: {_shorten(caption)}") + _wrapped(f"truth: {true_caption}")
    for question, answer, truth in questions:
        mark = "(ok)" if answer.strip().lower() == truth.lower() else f"(truth: {truth})"
        lines += _wrapped(f"Q: {question}") + _wrapped(f"   A: {_shorten(answer, 24) or '(nothing)'} {mark}")
    return lines


def _shorten(text, limit=72):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wrapped(text, width=52):
    return textwrap.wrap(text, width=width, subsequent_indent="      ") or [""]


def run_demo(
    train=False, num_scenes=6, eval_scenes=60, output="demo_scenes.png", preset=FASHION_PRESET,
    batch_size=64, baseline_train_scenes=5000,
):
    """The FashionScenes demo: captions and answers on test scenes, a PNG grid, three metrics.

    Loads `preset` (or, if it is missing, says how to train it and uses a random model of
    its size), runs `evaluation.evaluate_all` on the first `eval_scenes` test scenes with
    progress bars, prints a few answers, saves the first `num_scenes` scenes with the
    model's caption and answers under each, and prints the scores beside chance and the
    majority baseline. About a minute on two CPU cores.

    Args:
        train: bool. First train the preset through the curriculum (`demo --train`).
            Defaults to `False`.
        num_scenes: int. Scenes in the PNG grid. Defaults to `6`.
        eval_scenes: int. Test scenes scored (at least `num_scenes`). Defaults to `60`.
        output: str. The PNG's path. Defaults to `"demo_scenes.png"`.
        preset: str. Preset name or folder. Defaults to `"vishwam_tiny_fashion"`.
        batch_size: int. Prompts per `generate` call. Defaults to `64`.
        baseline_train_scenes: int. Train scenes the majority baseline counts. Defaults to `5000`.

    Returns:
        dict: `results` (`evaluate_all`'s), `trained`, `output`, `seconds`.
    """
    from vishwam_keras import evaluation
    from vishwam_keras.data import fashion_scenes

    start = time.perf_counter()
    if train:
        train_fashion_preset()
    model, trained = load_fashion_model(preset)
    scenes = fashion_scenes.make_scenes("test", max(int(num_scenes), int(eval_scenes)))
    print(f"Scoring {len(scenes)} FashionScenes test scenes (VQA, captions, retrieval)...")
    results = evaluation.evaluate_all(
        model, scenes=scenes, num_scenes=None, batch_size=batch_size,
        baseline_train_scenes=baseline_train_scenes, return_predictions=True,
    )
    captions = results["captions"]["predictions"]
    shown = _shown_questions(scenes, results["vqa"]["predictions"], num_scenes)
    print("\nA few test scenes:")
    for index in range(num_scenes):
        print(f"  scene {index}: model: {captions[index].strip()!r}\n"
              f"           truth: {scenes.captions[index]!r}")
        for question, answer, truth in shown[index]:
            print(f"    Q: {question:32s} A: {answer!r:18s} (truth {truth!r})")
    title = f"{preset}: test scenes" if trained else "UNTRAINED model (random weights): test scenes"
    save_scene_grid(scenes.images[:num_scenes], captions[:num_scenes], scenes.captions[:num_scenes],
                    shown, output, title)
    print(f"\nSaved the scenes with the model's captions and answers to {os.path.abspath(output)}")
    systems = evaluation.system_metrics(results)
    systems.pop("question_prior")
    print(f"\nScores on {len(scenes)} test scenes (%):")
    print(evaluation.format_table({"chance": systems["chance"], "majority": systems["majority"],
                                   "model": systems["model"]}))
    seconds = time.perf_counter() - start
    print(f"\nDemo finished in {seconds:.0f} s." + ("" if trained else f" Train the model: {TRAIN_COMMAND}"))
    return {"results": results, "trained": trained, "output": output, "seconds": seconds}


# === The text demo ===


class TimeBudget(keras.callbacks.Callback):
    """Stops `fit` once `seconds` of training have passed."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if time.time() - self.start > self.seconds:
            self.model.stop_training = True


def shakespeare_token_windows(tokenizer, sequence_length, max_windows=4096, seed=0):
    """Non-overlapping windows of `sequence_length + 1` tokens from the bundled plays."""
    from vishwam_keras.data.shakespeare import load_shakespeare_text

    works = load_shakespeare_text()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(works), size=min(6, len(works)), replace=False)
    ids = np.concatenate([np.asarray(tokenizer(works[i])) for i in sorted(chosen)])
    window = sequence_length + 1
    count = min(len(ids) // window, max_windows)
    return ids[: count * window].reshape(count, window).astype("int32")


def run_text_demo(seconds=60.0, seed=0, sequence_length=64, batch_size=16):
    """Train a ~1.5M-parameter model for `seconds`, then sample from three prompts."""
    import vishwam_keras

    keras.utils.set_random_seed(seed)
    preprocessor = vishwam_keras.VishwamCausalLMPreprocessor.from_preset(
        "vishwam_1b", sequence_length=sequence_length
    )
    tokenizer = preprocessor.tokenizer
    windows = shakespeare_token_windows(tokenizer, sequence_length, seed=seed)
    print(f"Training data: {len(windows)} windows of {sequence_length} tokens from Shakespeare.")

    backbone = vishwam_keras.VishwamBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=4,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=128,
        intermediate_dim=256,
        head_dim=32,
        sliding_window_size=32,
        sliding_window_pattern=2,
        final_logit_soft_cap=30.0,
    )
    # Train on pre-tokenised windows; attach the preprocessor for string-in generate.
    model = vishwam_keras.VishwamCausalLM(backbone)
    print(f"Model: {backbone.count_params():,} parameters; training for {seconds:.0f} s.")
    model.compile(
        optimizer=keras.optimizers.AdamW(3e-3, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["accuracy"],
        sampler=keras_hub_sampler(),
    )
    x = {"token_ids": windows[:, :-1], "padding_mask": np.ones_like(windows[:, :-1])}
    model.fit(
        x, windows[:, 1:], batch_size=batch_size, epochs=1000, verbose=1,
        callbacks=[TimeBudget(seconds)],
    )
    model.preprocessor = preprocessor
    print("\nSamples (top-k, k=10):")
    for prompt, text in zip(DEMO_PROMPTS, model.generate(DEMO_PROMPTS, max_length=48)):
        print(f"--- {prompt!r}\n{text}\n")
    return model


def keras_hub_sampler():
    import keras_hub

    return keras_hub.samplers.TopKSampler(k=10, seed=0)
