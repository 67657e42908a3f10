"""Quality evaluation on FashionScenes: VQA exact match, caption BLEU-4 and slot accuracy,
image <-> text retrieval, and the chance and majority baselines they are read against.

Reads scenes from `data/fashion_scenes.py` and prompts the model exactly as
`data/pipelines.py` trains it; drives a `VishwamCausalLM` through `generate` (greedy,
batched) and `embed_images` / `embed_texts`. Used by `benchmarks/quality.py` and the demo.

Every metric has a pure scoring function (`vqa_scores`, `caption_scores`,
`retrieval_recalls`) that takes predictions or embeddings, so it can be checked by hand;
the `evaluate_*` functions only add generation and embedding around them.
"""

import contextlib
import dataclasses
import math
import re
import time

import keras
import numpy as np

from vishwam_keras.data import fashion_scenes
from vishwam_keras.data.fashion_mnist import NUM_CLASSES, SHORT_NAMES, with_article
from vishwam_keras.data.pipelines import (
    ANSWER_SEPARATOR,
    CAPTION_PROMPT,
    VQA_PROMPT_PREFIX,
    VQA_PROMPT_SUFFIX,
)

DEFAULT_BATCH_SIZE = 64
# A "caption_first" answer (`pipelines.ANSWER_FORMATS`: caption, focus, answer) packs to at
# most 37 tokens with its end token (`pipelines.turns_length`), a "caption_checks" one (four
# slot checks as well) to at most 42; a direct answer to at most 5, and generation stops
# once every row has written its end token.
VQA_MAX_NEW_TOKENS = 48
CAPTION_MAX_NEW_TOKENS = 32  # the longest captions are 23 tokens plus the end token
RECALL_KS = (1, 5, 10)
BASELINE_TRAIN_SCENES = 10000
# How many answers a question type can have: a uniform guess among them is the chance level.
ANSWER_CHOICES = {
    "position": NUM_CLASSES,
    "relation": NUM_CLASSES,
    "count": len(fashion_scenes.NUMBER_WORDS),
    "exists": 2,
}
_ITEM_IDS = {with_article(name): class_id for class_id, name in enumerate(SHORT_NAMES)}
_CAPTION_PATTERN = re.compile(r"^(.+?) and (.+?) above (.+?) and (.+)$")


# === Prompts and text ===
def vqa_prompt(question):
    """`"Is there a bag?"` -> `"<start_of_image> Question: Is there a bag? Answer:"`."""
    return VQA_PROMPT_PREFIX + question + VQA_PROMPT_SUFFIX


def normalize_answer(text):
    """The answer normalisation of exact match: surrounding whitespace stripped, lower case."""
    return str(text).strip().lower()


def final_answer(text):
    """The answer of a completion: what follows its last `pipelines.ANSWER_SEPARATOR`
    (a `"caption_first"` model describes the scene and restates the question first), else
    the whole text.

    >>> final_answer(" a sneaker and a bag above a dress and a coat. a bag: yes")
    'yes'
    >>> final_answer(" two")
    ' two'
    """
    return str(text).rsplit(ANSWER_SEPARATOR, 1)[-1]


def parse_caption(text):
    """`"a sneaker and a bag above a dress and a coat"` -> `[7, 8, 3, 4]` (class ids).

    Slots follow `fashion_scenes.POSITIONS`; an item that names no class is `-1`. A text
    without the `"... and ... above ... and ..."` shape gives `None`.
    """
    match = _CAPTION_PATTERN.match(" ".join(normalize_answer(text).split()))
    if match is None:
        return None
    return [_ITEM_IDS.get(item.strip(), -1) for item in match.groups()]


# === Scenes ===
def as_scenes(scenes="test", num_scenes=None):
    """A `Scenes` from a split name (built with `make_scenes`) or the first `num_scenes` of one."""
    if isinstance(scenes, str):
        if num_scenes is None:
            num_scenes = fashion_scenes.DEFAULT_NUM_SCENES[scenes]
        return fashion_scenes.make_scenes(scenes, int(num_scenes))
    if not isinstance(scenes, fashion_scenes.Scenes):
        raise TypeError(
            f"`scenes` must be a split name or a `Scenes`. Received: {type(scenes).__name__}"
        )
    if num_scenes is None or num_scenes >= len(scenes):
        return scenes
    keep = slice(0, int(num_scenes))
    return dataclasses.replace(
        scenes,
        images=scenes.images[keep],
        labels=scenes.labels[keep],
        image_indices=scenes.image_indices[keep],
        captions=scenes.captions[keep],
        qa=scenes.qa[keep],
    )


def flatten_questions(scenes):
    """`[(scene_index, QuestionAnswer), ...]`, scene by scene, in `scenes.qa` order."""
    return [(index, qa) for index, questions in enumerate(scenes.qa) for qa in questions]


# === Batched generation ===
@contextlib.contextmanager
def greedy_sampling(model):
    """Makes `model.generate` greedy inside the block, then restores the model's sampler."""
    import keras_hub

    sampler = getattr(model, "sampler", None)
    if sampler is None or isinstance(sampler, keras_hub.samplers.GreedySampler):
        yield model
        return
    model.sampler = keras_hub.samplers.GreedySampler()
    model.generate_function = None  # the compiled functions close over the sampler
    try:
        yield model
    finally:
        model.sampler = sampler
        model.generate_function = None


def _max_length(model, prompts, max_new_tokens):
    """Longest prompt in tokens (images expanded) plus `max_new_tokens`; `None` without a tokenizer."""
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None or getattr(preprocessor, "tokenizer", None) is None:
        return None
    from vishwam_keras.models.tokenizer import START_OF_IMAGE_TOKEN

    expansion = preprocessor.image_expansion if preprocessor.image_converter is not None else ""
    lengths = [
        len(np.asarray(preprocessor.tokenizer(prompt.replace(START_OF_IMAGE_TOKEN, expansion))))
        for prompt in sorted(set(prompts))
    ]
    return max(lengths) + int(preprocessor.add_start_token) + int(max_new_tokens)


def _padded_batches(count, batch_size):
    """`(indices, real)` per batch; the last is padded by repeating its last index, so every
    batch has the same shape and compiled generate / embed functions are reused."""
    for start in range(0, count, batch_size):
        indices = list(range(start, min(start + batch_size, count)))
        real = len(indices)
        yield indices + [indices[-1]] * (batch_size - real), real


def _progress(total, verbose, label):
    if not verbose or total <= 1:
        return None
    print(label)
    return keras.utils.Progbar(total, unit_name="batch")


def generate_texts(
    model, prompts, images, batch_size=DEFAULT_BATCH_SIZE, max_new_tokens=VQA_MAX_NEW_TOKENS,
    verbose=True, label="Generating",
):
    """Greedy completions of image prompts, batched: `prompts[i]` sees `images[i]`.

    Args:
        model: a `VishwamCausalLM` with a preprocessor (or any object with the same
            `generate(inputs, max_length=..., strip_prompt=True)`).
        prompts: list of str, each with one `<start_of_image>`.
        images: array `(N, H, W, C)` (or a list), one image per prompt.
        batch_size: int. Prompts per `generate` call. Defaults to `64`.
        max_new_tokens: int. Tokens generated past the longest prompt. Defaults to `8`.
        verbose: bool. Show a progress bar. Defaults to `True`.

    Returns:
        List of N completions (the prompt stripped).
    """
    if len(prompts) != len(images):
        raise ValueError(f"One image per prompt: got {len(prompts)} prompts and {len(images)} images.")
    if not len(prompts):
        return []
    batch_size = max(1, min(int(batch_size), len(prompts)))
    max_length = _max_length(model, prompts, max_new_tokens)
    total = math.ceil(len(prompts) / batch_size)
    bar = _progress(total, verbose, f"{label}: {len(prompts)} prompts in {total} batches")
    outputs = []
    with greedy_sampling(model):
        for step, (indices, real) in enumerate(_padded_batches(len(prompts), batch_size)):
            inputs = {"prompts": [prompts[i] for i in indices], "images": [[images[i]] for i in indices]}
            texts = model.generate(inputs, max_length=max_length, strip_prompt=True)
            outputs.extend(texts[:real])
            if bar is not None:
                bar.update(step + 1)
    return outputs


def answer_questions(model, images, questions, **kwargs):
    """Greedy answers to `questions[i]` about `images[i]` (see `generate_texts`)."""
    prompts = [vqa_prompt(question) for question in questions]
    kwargs.setdefault("label", "VQA")
    return generate_texts(model, prompts, images, **kwargs)


def generate_captions(model, images, **kwargs):
    """Greedy captions for `images` (see `generate_texts`)."""
    kwargs.setdefault("max_new_tokens", CAPTION_MAX_NEW_TOKENS)
    kwargs.setdefault("label", "Captions")
    return generate_texts(model, [CAPTION_PROMPT] * len(images), images, **kwargs)


# === VQA ===
def vqa_scores(predictions, answers, question_types):
    """Exact-match accuracy overall and per question type: each prediction's
    `final_answer` against the true answer, both after `normalize_answer`.

    Returns:
        `{"accuracy", "per_type": {type: accuracy}, "count", "per_type_count"}`; types
        with no question are left out.

    Example:
    >>> vqa_scores([" Two", "yes", "a bag"], ["two", "no", "a bag"], ["count", "exists", "position"])["accuracy"]
    0.6666666666666666
    """
    if not len(predictions) == len(answers) == len(question_types):
        raise ValueError(
            "`predictions`, `answers` and `question_types` must have one entry per question. "
            f"Received lengths {len(predictions)}, {len(answers)}, {len(question_types)}."
        )
    correct = np.array(
        [normalize_answer(final_answer(p)) == normalize_answer(a) for p, a in zip(predictions, answers)],
        bool,
    )
    types = np.asarray(question_types)
    per_type, per_type_count = {}, {}
    for kind in _ordered_types(question_types):
        chosen = types == kind
        per_type[kind] = float(correct[chosen].mean())
        per_type_count[kind] = int(chosen.sum())
    return {
        "accuracy": float(correct.mean()) if len(correct) else float("nan"),
        "per_type": per_type,
        "count": int(len(correct)),
        "per_type_count": per_type_count,
    }


def _ordered_types(question_types):
    present = set(question_types)
    known = [kind for kind in fashion_scenes.QUESTION_TYPES if kind in present]
    return known + sorted(present - set(known))


def evaluate_vqa(
    model, scenes="test", num_scenes=1000, batch_size=DEFAULT_BATCH_SIZE, verbose=True,
    return_predictions=False,
):
    """Exact-match VQA accuracy of greedy answers, overall and per question type.

    Every question of every scene is asked, as `pipelines.vqa_examples` trains it
    (`"<start_of_image> Question: ... Answer:"`); the answer of each completion
    (`final_answer`: after the caption, for a model trained with
    `answer_format="caption_first"`) is compared after stripping and lower-casing.

    Args:
        model: a `VishwamCausalLM` with a preprocessor.
        scenes: a split name (`"test"`, `"compositional_test"`, ...) or a `Scenes`.
            Defaults to `"test"`.
        num_scenes: int or `None`. The first scenes used. Defaults to `1000`.
        batch_size: int. Defaults to `64`.
        verbose: bool. Progress bar. Defaults to `True`.
        return_predictions: bool. Add `predictions` (one per question, in
            `flatten_questions` order). Defaults to `False`.

    Returns:
        The `vqa_scores` dict (plus `predictions`).
    """
    scenes = as_scenes(scenes, num_scenes)
    questions = flatten_questions(scenes)
    predictions = answer_questions(
        model, [scenes.images[i] for i, _ in questions], [qa.question for _, qa in questions],
        batch_size=batch_size, verbose=verbose,
    )
    result = vqa_scores(
        predictions, [qa.answer for _, qa in questions], [qa.question_type for _, qa in questions]
    )
    if return_predictions:
        result["predictions"] = predictions
    return result


# === Captions ===
def bleu4(references, predictions):
    """Corpus BLEU-4 (SacreBLEU's 13a tokenisation) with `keras_hub.metrics.Bleu`, one reference each."""
    import keras_hub

    if len(references) != len(predictions):
        raise ValueError(f"One reference per prediction: got {len(references)} and {len(predictions)}.")
    if not len(predictions):
        return float("nan")
    metric = keras_hub.metrics.Bleu(max_order=4)
    metric.update_state(
        [[normalize_answer(r)] for r in references], [normalize_answer(p) for p in predictions]
    )
    return float(keras.ops.convert_to_numpy(metric.result()))


def caption_scores(predictions, labels):
    """BLEU-4 against the true captions, and per-slot accuracy of the parsed captions.

    Args:
        predictions: list of N generated captions.
        labels: int `(N, 4)`, the scenes' class ids in `POSITIONS` order.

    Returns:
        `{"bleu4", "slot_accuracy", "per_position": {position: accuracy}, "exact_match",
        "parse_rate", "count"}`. A caption that does not parse scores 0 in every slot.
    """
    labels = np.asarray(labels, np.int64).reshape(-1, len(fashion_scenes.POSITIONS))
    if len(predictions) != len(labels):
        raise ValueError(f"One caption per scene: got {len(predictions)} captions, {len(labels)} scenes.")
    parsed = [parse_caption(text) for text in predictions]
    slots = np.array([p if p is not None else [-1] * 4 for p in parsed], np.int64).reshape(labels.shape)
    correct = slots == labels
    references = [fashion_scenes.caption(row) for row in labels]
    return {
        "bleu4": bleu4(references, predictions),
        "slot_accuracy": float(correct.mean()) if correct.size else float("nan"),
        "per_position": {
            position: float(correct[:, p].mean()) if len(correct) else float("nan")
            for p, position in enumerate(fashion_scenes.POSITIONS)
        },
        "exact_match": float(correct.all(axis=1).mean()) if len(correct) else float("nan"),
        "parse_rate": float(np.mean([p is not None for p in parsed])) if parsed else float("nan"),
        "count": int(len(labels)),
    }


def evaluate_captions(
    model, scenes="test", num_scenes=1000, batch_size=DEFAULT_BATCH_SIZE, verbose=True,
    return_predictions=False,
):
    """Greedy captions of the scenes, scored by `caption_scores` (BLEU-4 and slot accuracy).

    Args are those of `evaluate_vqa`; the prompt is `pipelines.CAPTION_PROMPT`.
    """
    scenes = as_scenes(scenes, num_scenes)
    predictions = generate_captions(model, scenes.images, batch_size=batch_size, verbose=verbose)
    result = caption_scores(predictions, scenes.labels)
    if return_predictions:
        result["predictions"] = predictions
    return result


# === Retrieval ===
def _unit_rows(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _recall_at(similarity, relevance, ks):
    """Fraction of query rows with a relevant column among their `k` most similar."""
    # Stable sort: among equal similarities the lower index ranks first.
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = np.take_along_axis(relevance, order, axis=1)
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), similarity.shape[1])
    return {f"R@{k}": float((first_hit < k).mean()) for k in ks}


def retrieval_recalls(image_embeddings, text_embeddings, relevance=None, ks=RECALL_KS):
    """Image -> text and text -> image Recall@k by cosine similarity.

    Recall@k is the fraction of queries whose `k` nearest candidates hold a relevant one.

    Args:
        image_embeddings: `(N, D)`.
        text_embeddings: `(M, D)`.
        relevance: bool `(N, M)`, image `i` matches text `j`. Defaults to the identity
            (`N == M`, text `i` describes image `i`).
        ks: ints. Defaults to `(1, 5, 10)`.

    Returns:
        `{"image_to_text": {"R@1": ...}, "text_to_image": {...}, "count": N}`.

    Example:
    >>> images = np.eye(3)
    >>> texts = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    >>> retrieval_recalls(images, texts, ks=(1,))["image_to_text"]["R@1"]
    0.3333333333333333
    """
    similarity = _unit_rows(image_embeddings) @ _unit_rows(text_embeddings).T
    relevance = _relevance(relevance, similarity.shape)
    return {
        "image_to_text": _recall_at(similarity, relevance, ks),
        "text_to_image": _recall_at(similarity.T, relevance.T, ks),
        "count": int(similarity.shape[0]),
    }


def _relevance(relevance, shape):
    if relevance is None:
        if shape[0] != shape[1]:
            raise ValueError(f"Pass `relevance` when images and texts differ in number: {shape}.")
        return np.eye(shape[0], dtype=bool)
    relevance = np.asarray(relevance, bool)
    if relevance.shape != tuple(shape):
        raise ValueError(f"`relevance` must have shape {tuple(shape)}. Received: {relevance.shape}")
    return relevance


def caption_relevance(captions):
    """`(N, N)`: scene `i` matches caption `j` when the captions are the same text.

    Scenes with the same four classes in the same places share a caption; retrieving
    either one is correct.
    """
    captions = np.asarray(captions, dtype=object)
    return captions[:, None] == captions[None, :]


def chance_recalls(relevance, ks=RECALL_KS):
    """Expected Recall@k of a uniformly random ranking, exactly: per query with `r` relevant
    of `M` candidates, `1 - C(M - r, k) / C(M, k)`, averaged; both directions."""
    relevance = np.asarray(relevance, bool)

    def direction(matrix):
        total = matrix.shape[1]
        counts = matrix.sum(axis=1)
        return {
            f"R@{k}": float(np.mean([1.0 - math.comb(total - r, k) / math.comb(total, k) if k <= total else 1.0
                                     for r in counts]))
            for k in ks
        }

    return {"image_to_text": direction(relevance), "text_to_image": direction(relevance.T)}


def supports_retrieval(model):
    """Whether the model has the contrastive heads `embed_images` / `embed_texts` need."""
    return getattr(model, "contrastive_alignment", True) is not None and hasattr(model, "embed_images")


def embed_scene_images(model, images, batch_size=DEFAULT_BATCH_SIZE, verbose=True):
    """`model.embed_images` over raw scenes `(N, H, W, C)`, converted by the model's image converter."""
    converter = model.preprocessor.image_converter
    batch_size = max(1, min(int(batch_size), len(images)))
    bar = _progress(math.ceil(len(images) / batch_size), verbose, "Embedding images")
    outputs = []
    for step, (indices, real) in enumerate(_padded_batches(len(images), batch_size)):
        converted = np.asarray(keras.ops.convert_to_numpy(converter(np.asarray(images)[indices])))
        mask = np.ones((len(indices), 1), "int32")
        embedded = model.embed_images(converted[:, None], mask)
        outputs.append(np.asarray(keras.ops.convert_to_numpy(embedded))[:real])
        if bar is not None:
            bar.update(step + 1)
    return np.concatenate(outputs)


def embed_captions(model, captions, batch_size=DEFAULT_BATCH_SIZE, verbose=True):
    """`model.embed_texts` over captions, tokenised as the caption examples of training.

    The text tower saw each caption example's packed tokens (`CAPTION_PROMPT`, the
    caption with a leading space, start and end tokens; the image placeholders are left
    out of its pooling), so captions are packed the same way here.
    """
    preprocessor = model.preprocessor
    batch_size = max(1, min(int(batch_size), len(captions)))
    bar = _progress(math.ceil(len(captions) / batch_size), verbose, "Embedding captions")
    outputs = []
    for step, (indices, real) in enumerate(_padded_batches(len(captions), batch_size)):
        x = {"prompts": [CAPTION_PROMPT] * len(indices), "responses": [" " + captions[i] for i in indices]}
        x = preprocessor(x)[0]
        token_ids = np.asarray(keras.ops.convert_to_numpy(x["token_ids"]))
        padding_mask = np.asarray(keras.ops.convert_to_numpy(x["padding_mask"]))
        embedded = model.embed_texts(token_ids, padding_mask)
        outputs.append(np.asarray(keras.ops.convert_to_numpy(embedded))[:real])
        if bar is not None:
            bar.update(step + 1)
    return np.concatenate(outputs)


def evaluate_retrieval(
    model, scenes="test", num_scenes=1000, batch_size=DEFAULT_BATCH_SIZE, ks=RECALL_KS, verbose=True,
):
    """Image -> caption and caption -> image Recall@1/5/10 over `num_scenes` scenes.

    Embeds every scene with `embed_images` and every true caption with `embed_texts`,
    ranks by cosine similarity; identical captions count as one another's match
    (`caption_relevance`). A model without contrastive heads (built with
    `use_contrastive_loss=False`) gives `{"available": False, ...}`.

    Returns:
        `retrieval_recalls`'s dict plus `"available": True`.
    """
    if not supports_retrieval(model):
        return {"available": False, "reason": "the model has no contrastive heads (use_contrastive_loss=False)"}
    scenes = as_scenes(scenes, num_scenes)
    image_embeddings = embed_scene_images(model, scenes.images, batch_size, verbose)
    text_embeddings = embed_captions(model, scenes.captions, batch_size, verbose)
    result = retrieval_recalls(image_embeddings, text_embeddings, caption_relevance(scenes.captions), ks)
    result["available"] = True
    return result


# === Baselines ===
def train_question_answers(num_scenes=BASELINE_TRAIN_SCENES, seed=fashion_scenes.DEFAULT_SEED):
    """The `train` split's `(question, answer, question_type)` triples (labels only, no images)."""
    _, labels = fashion_scenes.scene_indices("train", int(num_scenes), seed)
    return [
        (qa.question, qa.answer, qa.question_type)
        for index, row in enumerate(labels)
        for qa in fashion_scenes.question_answers(row, index)
    ], labels


def _most_common(values):
    names, counts = np.unique(np.asarray(values, dtype=object).astype(str), return_counts=True)
    return str(names[np.argmax(counts)])


def majority_answers(train_triples):
    """`(per_type, per_question)`: the most frequent training answer of each type and question."""
    by_type, by_question = {}, {}
    for question, answer, kind in train_triples:
        by_type.setdefault(kind, []).append(answer)
        by_question.setdefault(question, []).append(answer)
    return (
        {kind: _most_common(answers) for kind, answers in by_type.items()},
        {question: _most_common(answers) for question, answers in by_question.items()},
    )


def vqa_baselines(scenes, train_triples):
    """Chance (a uniform guess among the type's answers, exactly), the training majority answer
    per question type, and the majority per question (a blind, question-only prior)."""
    questions = [qa for _, qa in flatten_questions(scenes)]
    answers = [qa.answer for qa in questions]
    types = [qa.question_type for qa in questions]
    per_type, per_question = majority_answers(train_triples)
    chance_hits = np.array([1.0 / ANSWER_CHOICES[kind] for kind in types])
    chance = {
        "accuracy": float(chance_hits.mean()),
        "per_type": {k: 1.0 / ANSWER_CHOICES[k] for k in _ordered_types(types)},
    }
    majority = vqa_scores([per_type.get(t, "") for t in types], answers, types)
    prior = vqa_scores([per_question.get(qa.question, "") for qa in questions], answers, types)
    return {"chance": chance, "majority": majority, "question_prior": prior}


def caption_baselines(labels, train_labels, seed=0):
    """Chance: captions of uniformly random classes (slot accuracy exactly 1/10, BLEU-4 of one
    seeded draw). Majority: every scene captioned with each position's most frequent
    training class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    random_labels = rng.integers(0, NUM_CLASSES, size=labels.shape)
    chance = caption_scores([fashion_scenes.caption(row) for row in random_labels], labels)
    chance["slot_accuracy"] = 1.0 / NUM_CLASSES
    chance["per_position"] = {p: 1.0 / NUM_CLASSES for p in fashion_scenes.POSITIONS}
    chance["exact_match"] = float(NUM_CLASSES) ** -4
    train_labels = np.asarray(train_labels)
    majority_row = [int(np.bincount(train_labels[:, p], minlength=NUM_CLASSES).argmax()) for p in range(4)]
    majority = caption_scores([fashion_scenes.caption(majority_row)] * len(labels), labels)
    majority["caption"] = fashion_scenes.caption(majority_row)
    return {"chance": chance, "majority": majority}


def baselines(scenes, train_scenes=BASELINE_TRAIN_SCENES, ks=RECALL_KS):
    """Chance and majority for every metric on `scenes` (majorities from `train_scenes` train scenes)."""
    triples, train_labels = train_question_answers(train_scenes)
    vqa = vqa_baselines(scenes, triples)
    captions = caption_baselines(scenes.labels, train_labels)
    retrieval = chance_recalls(caption_relevance(scenes.captions), ks)
    return {
        "chance": {"vqa": vqa["chance"], "captions": captions["chance"], "retrieval": retrieval},
        "majority": {"vqa": vqa["majority"], "captions": captions["majority"]},
        "question_prior": {"vqa": vqa["question_prior"]},
        "train_scenes": int(train_scenes),
    }


# === Everything ===
def evaluate_all(
    model, num_scenes=1000, split="test", scenes=None, batch_size=DEFAULT_BATCH_SIZE,
    baseline_train_scenes=BASELINE_TRAIN_SCENES, verbose=True, return_predictions=False,
):
    """VQA, captions and retrieval on the first `num_scenes` scenes of a split, with baselines.

    Args:
        model: a `VishwamCausalLM` with a preprocessor (e.g.
            `VishwamCausalLM.from_preset("vishwam_tiny_fashion")`).
        num_scenes: int. Defaults to `1000` (the committed test scenes).
        split: str. `"test"` or `"compositional_test"` (or any split). Defaults to `"test"`.
        scenes: `None` or a `Scenes` to use instead of building `split`.
        batch_size: int. Prompts per `generate` call. Defaults to `64`.
        baseline_train_scenes: int. Train scenes the majority baselines count. Defaults to `10000`.
        verbose: bool. Progress bars. Defaults to `True`.
        return_predictions: bool. Keep the generated answers and captions. Defaults to `False`.

    Returns:
        `{"split", "num_scenes", "vqa", "captions", "retrieval", "baselines", "seconds"}`.

    Example:
    ```python
    model = VishwamCausalLM.from_preset("vishwam_tiny_fashion")
    results = evaluate_all(model, num_scenes=100)
    results["vqa"]["accuracy"], results["baselines"]["majority"]["vqa"]["accuracy"]
    ```
    """
    scenes = as_scenes(split if scenes is None else scenes, num_scenes)
    seconds = {}
    with greedy_sampling(model):  # one sampler switch, so compiled generate functions are shared
        start = time.perf_counter()
        vqa = evaluate_vqa(model, scenes, None, batch_size, verbose, return_predictions)
        seconds["vqa"] = time.perf_counter() - start
        start = time.perf_counter()
        captions = evaluate_captions(model, scenes, None, batch_size, verbose, return_predictions)
        seconds["captions"] = time.perf_counter() - start
    start = time.perf_counter()
    retrieval = evaluate_retrieval(model, scenes, None, batch_size, verbose=verbose)
    seconds["retrieval"] = time.perf_counter() - start
    start = time.perf_counter()
    reference = baselines(scenes, baseline_train_scenes)
    seconds["baselines"] = time.perf_counter() - start
    return {
        "split": scenes.split,
        "num_scenes": len(scenes),
        "vqa": vqa,
        "captions": captions,
        "retrieval": retrieval,
        "baselines": reference,
        "seconds": seconds,
    }


HEADLINE_METRICS = (
    "VQA accuracy", "VQA position", "VQA count", "VQA exists", "VQA relation",
    "caption slot accuracy", "caption BLEU-4",
    "image->text R@1", "image->text R@5", "image->text R@10",
    "text->image R@1", "text->image R@5", "text->image R@10",
)


def headline_metrics(vqa=None, captions=None, retrieval=None):
    """`{metric: value}` over `HEADLINE_METRICS`, `None` where a system has no such number.

    Pass the `vqa` / `captions` / `retrieval` parts of `evaluate_all`'s result, or of one
    of its baselines (`results["baselines"]["chance"]`).
    """
    values = dict.fromkeys(HEADLINE_METRICS)
    vqa, captions, retrieval = vqa or {}, captions or {}, retrieval or {}
    values["VQA accuracy"] = vqa.get("accuracy")
    for kind, value in (vqa.get("per_type") or {}).items():
        values[f"VQA {kind}"] = value
    values["caption slot accuracy"] = captions.get("slot_accuracy")
    values["caption BLEU-4"] = captions.get("bleu4")
    for direction, short in (("image_to_text", "image->text"), ("text_to_image", "text->image")):
        for k, value in (retrieval.get(direction) or {}).items():
            values[f"{short} {k}"] = value
    return {key: values[key] for key in HEADLINE_METRICS}


def system_metrics(results):
    """Headline metrics of the model and of its baselines: `{system: {metric: value}}`."""
    reference = results["baselines"]
    systems = {
        name: headline_metrics(**reference[name])
        for name in ("chance", "majority", "question_prior")
    }
    systems["model"] = headline_metrics(results["vqa"], results["captions"], results["retrieval"])
    return systems


def format_table(systems, metrics=HEADLINE_METRICS, percent=True):
    """A Markdown table: one row per metric, one column per system (`system_metrics`' dict).

    Missing numbers print as `-`; with `percent`, values print as percentages.
    """
    names = list(systems)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for metric in metrics:
        cells = []
        for name in names:
            value = systems[name].get(metric)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("-")
            else:
                cells.append(f"{100 * value:.1f}" if percent else f"{value:.4f}")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
