"""Text-only probe: can this architecture learn a VQA response format when it is given the caption?

    python -m benchmarks.fashion_training.text_probe --variant checks [--steps 1500]

The same decoder as `vishwam_tiny_fashion` without the vision encoder, trained from
scratch on FashionScenes questions with the scene's true caption in the prompt
(`"Question: Is there a bag? Caption: a sneaker and a bag above ... Answer:"`); it writes
the rest of the `caption_checks` response (focus, per-slot checks, answer), and greedy
answers to the first 1,700 validation questions (108 scenes) are scored per question type.
This separates learning the lookup from seeing the scene. Variants:
  checks     the shipped format: `" a bag? no yes no no: yes"`;
  repeats    the same with "is there an X?" questions three times as often;
  slotwords  each check names its slot's class first: `" a bag? sneaker no, bag yes, dress
             no, coat no: yes"`.
Results: benchmarks/fashion_training/README.md.
"""

import argparse
import dataclasses
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from vishwam_keras.data import fashion_scenes, pipelines  # noqa: E402
from vishwam_keras.data.fashion_mnist import SHORT_NAMES  # noqa: E402
from vishwam_keras.evaluation import final_answer, parse_caption, vqa_scores  # noqa: E402

VARIANTS = ("checks", "repeats", "slotwords")
QUESTION_TYPES = dict(zip(fashion_scenes.QUESTIONS, fashion_scenes.QUESTION_TYPE_OF))
CAPTION_END = ". "  # a caption_checks response: " <caption>. <focus>? <checks>: <answer>"


def text_only_example(prompt, response, variant="checks"):
    """A `caption_checks` VQA example with its caption moved into the prompt.

    >>> text_only_example("<start_of_image> Question: Is there a bag? Answer:",
    ...                   " a sneaker and a bag above a dress and a coat. a bag? no yes no no: yes",
    ...                   "slotwords")
    ('Question: Is there a bag? Caption: a sneaker and a bag above a dress and a coat. Answer:', ' a bag? sneaker no, bag yes, dress no, coat no: yes')
    """
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {VARIANTS}. Received: {variant!r}")
    caption, rest = response.strip().split(CAPTION_END, 1)
    question = prompt.removeprefix(pipelines.VQA_PROMPT_PREFIX).removesuffix(pipelines.VQA_PROMPT_SUFFIX).strip()
    if variant == "slotwords" and pipelines.CHECK_SEPARATOR in rest:
        focus, tail = rest.split(pipelines.CHECK_SEPARATOR, 1)
        checks, answer = tail.rsplit(pipelines.ANSWER_SEPARATOR, 1)
        slots = [SHORT_NAMES[class_id] for class_id in parse_caption(caption)]
        checks = ", ".join(f"{slot} {check}" for slot, check in zip(slots, checks.split()))
        rest = f"{focus}{pipelines.CHECK_SEPARATOR}{checks}{pipelines.ANSWER_SEPARATOR}{answer}"
    return f"Question: {question} Caption: {caption}.{pipelines.VQA_PROMPT_SUFFIX}", " " + rest


def question_type(prompt):
    """The type of a probe prompt's question (`"Question: <q> Caption: ..."`), from
    `fashion_scenes.QUESTION_TYPE_OF`."""
    question = prompt.removeprefix("Question: ").split(" Caption: ", 1)[0]
    return QUESTION_TYPES[question]


def probe_examples(split, count, variant, seed=0, repeat=False, shuffle=False):
    """`(prompts, responses)`: the first `count` text-only examples of `split` (the
    `"repeats"` variant's extra exists questions only in training)."""
    repeats = {"exists": 3} if variant == "repeats" and split == "train" else None
    dataset = pipelines.vqa_examples(
        split, seed=seed, repeat=repeat, shuffle=shuffle, answer_format="caption_checks",
        question_type_repeats=repeats,
    )
    pairs = [
        text_only_example(row["prompts"].decode(), row["responses"].decode(), variant)
        for row in dataset.take(count).as_numpy_iterator()
    ]
    return [p for p, _ in pairs], [r for _, r in pairs]


def _before_answer(text):
    """The focus and checks of a response: everything before its last `": "`."""
    return text.strip().rsplit(pipelines.ANSWER_SEPARATOR, 1)[0]


def run(variant="checks", steps=1500, batch_size=16, sequence_length=80, num_questions=1700, seed=0,
        vocabulary_size=None):
    """Trains and scores one probe; `vocabulary_size` picks the packaged vocabulary
    (`training.pipeline.fashion_model_config`; `None`: the preset's 8192 pieces)."""
    import tensorflow as tf

    from vishwam_keras.models.factory import create_multimodal_model, create_preprocessor
    from vishwam_keras.training.pipeline import fashion_model_config

    start = time.time()
    keras.utils.set_random_seed(seed)
    prompts, responses = probe_examples("train", steps * batch_size, variant, seed, repeat=True, shuffle=True)
    config = dataclasses.replace(fashion_model_config(vocabulary_size), vision_embed_dim=None)  # text only
    preprocessor = create_preprocessor(config, sequence_length)
    model = create_multimodal_model(config, preprocessor=preprocessor)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=2e-3, warmup_steps=min(100, steps // 10)
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["accuracy"], sampler="greedy",
    )
    train = (
        tf.data.Dataset.from_tensor_slices({"prompts": prompts, "responses": responses})
        .batch(batch_size).map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE).prefetch(4)
    )
    model.preprocessor = None  # the batches are preprocessed already
    model.fit(train, epochs=1, verbose=2)
    model.preprocessor = preprocessor
    train_seconds = time.time() - start

    prompts, responses = probe_examples("validation", num_questions, variant)
    completions = []
    for i in range(0, len(prompts), 64):
        completions += model.generate(prompts[i:i + 64], max_length=sequence_length, strip_prompt=True)
    types = [question_type(prompt) for prompt in prompts]
    scores = vqa_scores(completions, [final_answer(r) for r in responses], types)
    exact = np.array([_before_answer(c) == _before_answer(r) for c, r in zip(completions, responses)])
    print(f"variant {variant}, vocabulary {config.vocabulary_size}: {steps} steps, {train_seconds:.0f} s, "
          f"{len(prompts)} validation questions")
    for kind, accuracy in scores["per_type"].items():
        print(f"  {kind}: answer {100 * accuracy:.1f}%, focus and checks exact "
              f"{100 * exact[np.asarray(types) == kind].mean():.1f}% (n={scores['per_type_count'][kind]})")
    print(f"  all: {100 * scores['accuracy']:.1f}%")
    return scores, exact


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS, default="checks")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--vocabulary-size", type=int, default=None, help="packaged vocabulary (default: 8192)")
    args = parser.parse_args()
    run(args.variant, args.steps, vocabulary_size=args.vocabulary_size)
