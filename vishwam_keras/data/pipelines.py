"""tf.data pipelines for the three curriculum stages: Shakespeare text, captions, scene VQA.

Each yields batches of the preprocessor's fit inputs (`prompts`, `responses`, `images`,
`image_mask`), from `shakespeare.py` and `fashion_scenes.py`, ready for `VishwamCausalLM.fit`.

Every example has one image slot: `images` is uint8 `(1, 56, 56, 1)` and `image_mask` is
int32 `(1,)`, so batches are `(batch, 1, 56, 56, 1)` and `(batch, 1)`. Text examples carry a
black image with `image_mask` 0 and no `<start_of_image>` in the prompt, so they mix with
image examples in one dataset; a preprocessor without an image converter ignores both keys.

- text: prompt `""`, response a chunk of Shakespeare (the loss covers the whole chunk);
- caption: prompt `"<start_of_image> Caption:"`, response `" a sneaker and a bag above ..."`;
- vqa: prompt `"<start_of_image> Question: How many shoes are there? Answer:"`, response
  `" two"`; with `answer_format="caption_first"` the response describes the scene and
  restates what is asked first, `" a sneaker and a bag above a dress and a coat. shoes: one"`
  (the answer follows the last `ANSWER_SEPARATOR`); `answer_format="caption_checks"` adds,
  for questions that name an item, a check per caption slot before the answer,
  `" ... a coat. a bag? no yes no no: yes"`;
- counterfactual_vqa (`caption_first` only): the description is given, with one item
  swapped for another class, at the end of the prompt, and the response answers from it,
  `"... Answer: a sneaker and a bag above a dress and a sandal."` -> `" shoes: two"`: the
  model learns to answer from what it has written, even where the image disagrees;
- described_vqa (text only, black image with `image_mask` 0): the same answers from a
  written description and no image, `"Question: How many shoes are there? Answer: a
  sneaker and a bag above a dress and a coat."` -> `" shoes: one"`: reading
  comprehension over scene descriptions, which a language model can learn before it
  sees an image (the text stage of `train_fashion_preset`).

Shuffling is stateless (`tf.random.experimental.index_shuffle` with `seed` and the epoch),
so a seed gives the same batches whatever TensorFlow's global seed is; with `repeat=True`
each epoch is a new permutation.
"""

import functools

import numpy as np
import tensorflow as tf

from vishwam_keras.checks import check_int
from vishwam_keras.data import fashion_mnist, fashion_scenes
from vishwam_keras.data.shakespeare import load_shakespeare_works

CAPTION_PROMPT = "<start_of_image> Caption:"
VQA_PROMPT_PREFIX = "<start_of_image> Question: "
VQA_PROMPT_SUFFIX = " Answer:"
# Prompt of each question after the first in a multi-question VQA example.
FOLLOW_UP_PREFIX = " Question: "
# How a VQA response is written: the answer alone (`" one"`), or the scene's caption, the
# question's focus (`fashion_scenes.QUESTION_FOCUS`), `ANSWER_SEPARATOR` and the answer
# (`" a sneaker and ... and a coat. shoes: one"`): the model names every item, then what is
# asked, right before answering, so "is there a bag?" becomes a lookup of the word just
# written in its own text. `"caption_checks"` is `"caption_first"` where a question names
# an item ("is there a bag?", "what is left of the bag?"): after the focus, `CHECK_SEPARATOR`
# and one check per position of the caption, `"yes"` where the named item is written there
# and `"no"` elsewhere (`" ... a bag? no yes no no: yes"`), so the answer reads four
# checks made one slot at a time instead of searching the caption for a word.
ANSWER_FORMATS = ("direct", "caption_first", "caption_checks")
ANSWER_SEPARATOR = ": "
CHECK_SEPARATOR = "? "
CHECK_WORDS = ("no", "yes")
# Held out of the text stage's train split: one play and one poem (about 2% of the text).
TEXT_VALIDATION_WORKS = ("tempest", "lovers_complaint")
DEFAULT_SEQUENCE_CHARS = 512
DEFAULT_MIXTURE = {"caption": 0.3, "vqa": 0.7}
MIXTURE_SOURCES = ("text", "caption", "vqa", "counterfactual_vqa", "described_vqa")
TEXT_ONLY_SOURCES = ("text", "described_vqa")
# Stage names of `training.curriculum.default_curriculum`, so `stage_datasets(...)` can be
# passed to `run_curriculum` as is.
STAGE_NAMES = ("text_pretraining", "vision_alignment", "multimodal_finetuning")

_STREAMS = {"text": 0, "caption": 1, "vqa": 2, "mixture": 3}
# The counterfactual VQA stream shuffles as the VQA stream of `seed + COUNTERFACTUAL_SEED_OFFSET`
# (a stream of its own in `_STREAMS` would change every other stream's keys), and its edits
# come from their own generator stream, `COUNTERFACTUAL_EDIT_STREAM`.
COUNTERFACTUAL_SEED_OFFSET = 7919
COUNTERFACTUAL_EDIT_STREAM = 4
# The described-VQA stream likewise shuffles as the VQA stream of `seed + DESCRIBED_SEED_OFFSET`.
DESCRIBED_SEED_OFFSET = 104729
DESCRIBED_VQA_PROMPT_PREFIX = "Question: "
_SCENE_SHAPE = (1, fashion_scenes.SCENE_SIZE, fashion_scenes.SCENE_SIZE, 1)


# === Sources ===
def shakespeare_chunks(split="train", sequence_chars=DEFAULT_SEQUENCE_CHARS):
    """The packaged Shakespeare corpus cut into chunks of at most `sequence_chars` chars.

    Chunks end at a line break where one falls in the second half of the window, so
    lines are rarely cut. `"validation"` is the works in `TEXT_VALIDATION_WORKS`,
    `"train"` the rest. Chunks with fewer than 16 non-space characters are dropped.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"`split` must be 'train' or 'validation'. Received: split={split!r}")
    if isinstance(sequence_chars, bool) or not isinstance(sequence_chars, int) or sequence_chars < 32:
        raise ValueError(f"`sequence_chars` must be an int >= 32. Received: {sequence_chars!r}")
    return list(_chunks(split, sequence_chars))


@functools.lru_cache(maxsize=4)
def _chunks(split, sequence_chars):
    chunks = []
    for work in load_shakespeare_works():
        if (work["title"] in TEXT_VALIDATION_WORKS) != (split == "validation"):
            continue
        text, start = work["text"], 0
        while start < len(text):
            stop = min(start + sequence_chars, len(text))
            if stop < len(text):
                newline = text.rfind("\n", start + sequence_chars // 2, stop)
                stop = newline + 1 if newline >= 0 else stop
            chunk = text[start:stop]
            if len(chunk.strip()) >= 16:
                chunks.append(chunk)
            start = stop
    return tuple(chunks)


@functools.lru_cache(maxsize=8)
def _scene_table(split, num_scenes, scene_seed, data_dir):
    """Scene placements plus flat QA ids: what the scene pipelines gather from,
    `(source_images, image_indices, captions, qa, labels)`."""
    indices, labels = fashion_scenes.scene_indices(split, num_scenes, scene_seed, data_dir)
    source_images, _ = fashion_mnist.load_fashion_mnist(fashion_scenes.source_split(split), data_dir)
    captions = [" " + fashion_scenes.caption(row) for row in labels]
    qa = [
        (scene, question, answer)
        for scene, row in enumerate(labels)
        for question, answer in fashion_scenes.question_answer_ids(row, scene)
    ]
    qa = np.asarray(qa, np.int64).reshape(-1, 3)
    return source_images, indices, captions, qa, labels


@functools.lru_cache(maxsize=4)
def _counterfactual_table(split, num_scenes, scene_seed, data_dir):
    """Each scene with one item swapped: `(captions, qa)` of the edited scenes.

    Scene `i` changes the class at one position to another class, both drawn uniformly
    and stateless in `(scene_seed, split, i)`; a held-out (class, position) pair
    (`fashion_scenes.HELD_OUT_PAIRS`) is never written, so the compositional test stays
    unseen in text too. `qa` rows are `(scene, question_id, answer_id)` of the edited
    labels, every question the edited scene has.
    """
    _, labels = fashion_scenes.scene_indices(split, num_scenes, scene_seed, data_dir)
    held_out = set(fashion_scenes.held_out_position_ids())
    uniforms = np.random.default_rng(
        [scene_seed, fashion_scenes.SPLITS.index(split), COUNTERFACTUAL_EDIT_STREAM]
    ).random((len(labels), 2))
    captions, qa = [], []
    for scene, (row, (u_position, u_class)) in enumerate(zip(labels.tolist(), uniforms)):
        position = int(u_position * len(row))
        others = [
            c for c in range(fashion_mnist.NUM_CLASSES)
            if c != row[position] and (c, position) not in held_out
        ]
        row[position] = others[int(u_class * len(others))]
        captions.append(" " + fashion_scenes.caption(row) + ".")
        qa.extend((scene, q, a) for q, a in fashion_scenes.question_answer_ids(row, scene))
    return captions, np.asarray(qa, np.int64).reshape(-1, 3)


def _num_scenes(split, num_scenes):
    fashion_scenes.source_split(split)  # validates `split`
    return fashion_scenes.DEFAULT_NUM_SCENES[split] if num_scenes is None else int(num_scenes)


def _text_split(split):
    return "train" if split == "train" else "validation"


# === Shuffled index streams ===
def _indices(num_items, seed, stream, repeat, shuffle=True):
    """Item indices 0..num_items-1, one permutation per epoch, stateless in `seed`.

    Built on `range` / `counter` so the cardinality stays known (finite or infinite).
    """
    if num_items < 1:
        raise ValueError("Nothing to iterate over: the source has no examples.")
    positions = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(num_items)
    if not shuffle:
        return positions.map(lambda k: k % num_items)
    seed = tf.constant(int(seed), tf.int64)
    max_index = tf.constant(num_items - 1, tf.int64)

    def shuffled(k):
        epoch, index = k // num_items, k % num_items
        key = tf.stack([seed, epoch * len(_STREAMS) + _STREAMS[stream]])
        return tf.random.experimental.index_shuffle(index, key, max_index)

    return positions.map(shuffled)


def _qa_strings():
    """`fashion_scenes.QUESTIONS` and the `ANSWERS` as responses (leading space), as tensors."""
    answers = [" " + answer for answer in fashion_scenes.ANSWERS]
    return tf.constant(fashion_scenes.QUESTIONS), tf.constant(answers)


def _scene_image(pool, item_indices):
    """Four 28x28 items -> one `(1, 56, 56, 1)` scene, as `fashion_scenes.compose_images`."""
    items = tf.gather(pool, item_indices)
    size = fashion_mnist.IMAGE_SIZE
    grid = tf.transpose(tf.reshape(items, (2, 2, size, size)), (0, 2, 1, 3))
    return tf.reshape(grid, _SCENE_SHAPE)


def _finish(dataset, batch_size, drop_remainder):
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


# === Unbatched examples ===
def text_examples(
    split="train",
    sequence_chars=DEFAULT_SEQUENCE_CHARS,
    seed=0,
    repeat=False,
    image_slots=True,
    shuffle=True,
):
    """Shakespeare chunks as `{"prompts": "", "responses": chunk}` examples (unbatched).

    With `image_slots` (the default) each example also has a black `images`
    `(1, 56, 56, 1)` and `image_mask` `[0]`, to mix with scene examples.
    """
    chunks = tf.constant(shakespeare_chunks(split, sequence_chars))
    blank = tf.zeros(_SCENE_SHAPE, tf.uint8)

    def to_example(index):
        example = {"prompts": tf.constant(""), "responses": chunks[index]}
        if image_slots:
            example.update(images=blank, image_mask=tf.zeros((1,), tf.int32))
        return example

    indices = _indices(int(chunks.shape[0]), seed, "text", repeat, shuffle)
    return indices.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)


def caption_examples(
    split="train",
    num_scenes=None,
    seed=0,
    repeat=False,
    scene_seed=fashion_scenes.DEFAULT_SEED,
    data_dir=None,
    shuffle=True,
):
    """One caption example per scene (unbatched): prompt `CAPTION_PROMPT`, response the caption."""
    table = _scene_table(split, _num_scenes(split, num_scenes), scene_seed, data_dir)
    pool, indices, captions, _, _ = table
    pool, indices, captions = tf.constant(pool), tf.constant(indices), tf.constant(captions)

    def to_example(scene):
        return {
            "prompts": tf.constant(CAPTION_PROMPT),
            "responses": captions[scene],
            "images": _scene_image(pool, indices[scene]),
            "image_mask": tf.ones((1,), tf.int32),
        }

    scenes = _indices(int(indices.shape[0]), seed, "caption", repeat, shuffle)
    return scenes.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)


def vqa_examples(
    split="train",
    num_scenes=None,
    seed=0,
    repeat=False,
    scene_seed=fashion_scenes.DEFAULT_SEED,
    data_dir=None,
    question_types=None,
    shuffle=True,
    questions_per_example=1,
    question_type_repeats=None,
    answer_format="direct",
):
    """VQA examples (unbatched): `"<start_of_image> Question: ... Answer:"` -> `" answer"`.

    `answer_format="caption_first"` writes each response as the scene's caption, then
    the question's focus, `ANSWER_SEPARATOR` and the answer (`" a sneaker and ... and a
    coat. a bag: yes"` for "Is there a bag?"); `"direct"` (the default) as the answer alone.
    `"caption_checks"` writes the caption-first response with, where the question names
    an item (exists and relation questions), `CHECK_SEPARATOR` and one of `CHECK_WORDS`
    per caption slot after the focus: `" a sneaker and a bag above a dress and a coat. left
    of the bag? no yes no no: a sneaker"`.

    With `questions_per_example=1` (the default), one example per (scene, question).
    With `k > 1`, one multi-turn example per scene: `k` of its questions drawn at random
    (stateless in `seed` and the example's position), as `prompts` / `responses` of
    shape `(k,)`; the first turn is the single-question prompt, the others
    `" Question: ... Answer:"` (see `VishwamCausalLMPreprocessor`, which ends each turn
    with `<eos>`). Every scene has at least 10 questions; `k` must not exceed that.

    `question_types` keeps only some of `fashion_scenes.QUESTION_TYPES` (all by default).
    `question_type_repeats` (single-question examples only) maps a question type to how
    many times each of its questions appears per epoch (default 1; e.g. `{"exists": 2}`
    doubles the share of "Is there ...?" questions).
    """
    check_questions_per_example(questions_per_example)
    answer_format = check_answer_format(answer_format)
    repeats = check_question_type_repeats(question_type_repeats)
    if repeats and questions_per_example > 1:
        raise ValueError(
            "`question_type_repeats` applies to single-question examples; with "
            f"questions_per_example={questions_per_example} pass question_type_repeats=None."
        )
    pool, indices, captions, qa, labels = _scene_table(split, _num_scenes(split, num_scenes), scene_seed, data_dir)
    respond = _responder(captions, answer_format, labels)
    if question_types is not None:
        unknown = sorted(set(question_types) - set(fashion_scenes.QUESTION_TYPES))
        if unknown:
            raise ValueError(f"Unknown question types {unknown}. Known: {fashion_scenes.QUESTION_TYPES}")
        types = np.asarray(fashion_scenes.QUESTION_TYPE_OF)[qa[:, 1]]
        qa = qa[np.isin(types, list(question_types))]
    if repeats:
        types = np.asarray(fashion_scenes.QUESTION_TYPE_OF)[qa[:, 1]]
        qa = np.repeat(qa, [repeats.get(kind, 1) for kind in types], axis=0)
    if questions_per_example > 1:
        return _multi_question_examples(
            pool, indices, qa, seed, repeat, shuffle, questions_per_example, respond
        )
    pool, indices, qa = tf.constant(pool), tf.constant(indices), tf.constant(qa)
    questions, _ = _qa_strings()

    def to_example(row):
        scene, question, answer = qa[row, 0], qa[row, 1], qa[row, 2]
        prompt = tf.strings.join([VQA_PROMPT_PREFIX, questions[question], VQA_PROMPT_SUFFIX])
        return {
            "prompts": prompt,
            "responses": respond(scene, question, answer),
            "images": _scene_image(pool, indices[scene]),
            "image_mask": tf.ones((1,), tf.int32),
        }

    rows = _indices(int(qa.shape[0]), seed, "vqa", repeat, shuffle)
    return rows.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)


def _responder(captions, answer_format, labels=None):
    """`respond(scene, question_ids, answer_ids)`: the response strings of one scene's
    questions (tensors), in `answer_format` (`"caption_checks"` needs the scenes'
    `labels`, `(N, 4)`)."""
    _, answers = _qa_strings()
    if answer_format == "direct":
        return lambda scene, question, answer: tf.gather(answers, answer)
    captions = tf.constant(captions)  # with their leading space
    focus_answer = _focus_answer(labels if answer_format == "caption_checks" else None)

    def respond(scene, question, answer):
        return tf.strings.join([captions[scene], ". ", focus_answer(question, answer, scene)])

    return respond


def _focus_answer(labels=None):
    """`focus_answer(question_ids, answer_ids, scene=None)`: the end of a caption-first
    response, the question's focus, `ANSWER_SEPARATOR` and the answer (`"a bag: yes"`), as
    tensors. With the scenes' `labels` (`(N, 4)`, the `"caption_checks"` format) a
    question that names an item gets its slot checks of `scene` after the focus
    (`"a bag? no yes no no: yes"`)."""
    focus = tf.constant(list(fashion_scenes.QUESTION_FOCUS))
    plain = tf.constant(list(fashion_scenes.ANSWERS))
    if labels is not None:
        labels = tf.constant(np.asarray(labels, np.int64))
        items = tf.constant(fashion_scenes.QUESTION_ITEM, tf.int64)
        words = tf.constant(list(CHECK_WORDS))

    def focus_answer(question, answer, scene=None):
        parts = [tf.gather(focus, question)]
        if labels is not None:
            item = tf.gather(items, question)
            found = tf.cast(tf.equal(labels[scene], item[..., None]), tf.int32)  # (..., 4)
            checks = tf.strings.reduce_join(tf.gather(words, found), axis=-1, separator=" ")
            parts.append(tf.where(item >= 0, tf.strings.join([CHECK_SEPARATOR, checks]), ""))
        return tf.strings.join(parts + [ANSWER_SEPARATOR, tf.gather(plain, answer)])

    return focus_answer


def _described_answer(prompt_prefix, descriptions):
    """`described(scene, question_id, answer_id)` -> `(prompt, response)` tensors of a
    question answered from a written description: `prompt_prefix`, the question,
    `VQA_PROMPT_SUFFIX` and `descriptions[scene]`; then `" "`, the focus,
    `ANSWER_SEPARATOR` and the answer (the end of a caption-first response)."""
    descriptions = tf.constant(descriptions)
    questions, _ = _qa_strings()
    focus_answer = _focus_answer()

    def described(scene, question, answer):
        prompt = tf.strings.join([prompt_prefix, questions[question], VQA_PROMPT_SUFFIX, descriptions[scene]])
        return prompt, tf.strings.join([" ", focus_answer(question, answer)])

    return described


def counterfactual_vqa_examples(
    split="train",
    num_scenes=None,
    seed=0,
    repeat=False,
    scene_seed=fashion_scenes.DEFAULT_SEED,
    data_dir=None,
    shuffle=True,
):
    """VQA examples whose scene description is given, edited, and answered from (unbatched).

    For `answer_format="caption_first"` models, which describe the scene before answering:
    the prompt is the VQA prompt followed by the scene's caption with one item swapped
    for another class (`_counterfactual_table`) and `"."`, and the response is the rest
    of a caption-first answer, the question's focus, `ANSWER_SEPARATOR` and the answer
    *of the edited scene*: `"<start_of_image> Question: Is there a sandal? Answer: a
    sneaker and a bag above a dress and a sandal."` -> `" a sandal: yes"`. The image is the
    real scene. The description sits in the prompt, so the loss never teaches the wrong
    caption; what it teaches is to answer from the words written, which is what a
    caption-first answer relies on when its own description is right and the direct
    reading of the image is not. One example per (scene, question of the edited scene).
    """
    num_scenes = _num_scenes(split, num_scenes)
    pool, indices, _, _, _ = _scene_table(split, num_scenes, scene_seed, data_dir)
    pool, indices = tf.constant(pool), tf.constant(indices)
    captions, qa = _counterfactual_table(split, num_scenes, scene_seed, data_dir)
    qa = tf.constant(qa)
    described = _described_answer(VQA_PROMPT_PREFIX, captions)

    def to_example(row):
        scene, question, answer = qa[row, 0], qa[row, 1], qa[row, 2]
        prompt, response = described(scene, question, answer)
        return {
            "prompts": prompt,
            "responses": response,
            "images": _scene_image(pool, indices[scene]),
            "image_mask": tf.ones((1,), tf.int32),
        }

    rows = _indices(int(qa.shape[0]), seed + COUNTERFACTUAL_SEED_OFFSET, "vqa", repeat, shuffle)
    return rows.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)


def described_vqa_examples(
    split="train",
    num_scenes=None,
    seed=0,
    repeat=False,
    scene_seed=fashion_scenes.DEFAULT_SEED,
    data_dir=None,
    shuffle=True,
    image_slots=True,
):
    """Questions answered from a written scene description, without the image (unbatched).

    The text-only half of a caption-first answer: the prompt is the question without
    `<start_of_image>`, then the scene's true caption and `"."`; the response is the
    question's focus, `ANSWER_SEPARATOR` and the answer: `"Question: Is there a bag?
    Answer: a sneaker and a bag above a dress and a coat."` -> `" a bag: yes"`. The
    description sits in the prompt, so the loss is on the lookup alone ("is the word
    asked about among the four written?", "what is written next to it?"). A model that
    learns this in its text stage meets caption-first VQA already able to answer from
    its own description; with the image there from the start the lookup competes with
    a direct reading of the image and is learnt slowly (see
    `benchmarks/fashion_training/README.md`). One example per (scene, question), every
    question type; with `image_slots` (the default) each example carries a black image
    with `image_mask` 0, as `text_examples`, so it mixes with image examples.
    """
    _, _, captions, qa, _ = _scene_table(split, _num_scenes(split, num_scenes), scene_seed, data_dir)
    qa = tf.constant(qa)
    described = _described_answer(DESCRIBED_VQA_PROMPT_PREFIX, [caption + "." for caption in captions])
    blank = tf.zeros(_SCENE_SHAPE, tf.uint8)

    def to_example(row):
        scene, question, answer = qa[row, 0], qa[row, 1], qa[row, 2]
        prompt, response = described(scene, question, answer)
        example = {"prompts": prompt, "responses": response}
        if image_slots:
            example.update(images=blank, image_mask=tf.zeros((1,), tf.int32))
        return example

    rows = _indices(int(qa.shape[0]), seed + DESCRIBED_SEED_OFFSET, "vqa", repeat, shuffle)
    return rows.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)


DESCRIPTION_SOURCES = ("counterfactual_vqa", "described_vqa")


def _check_description_sources(sources, mixture, answer_format, questions_per_example, name="mixture"):
    """The sources that answer from a written description end a caption-first answer
    and are single questions: refuse them otherwise, naming `name`."""
    described = [source for source in sources if source in DESCRIPTION_SOURCES]
    if described and (answer_format != "caption_first" or questions_per_example > 1):
        raise ValueError(
            f"The `{described[0]}` source answers from a scene description, so it needs "
            "answer_format='caption_first' and questions_per_example=1. Received: "
            f"answer_format={answer_format!r}, questions_per_example={questions_per_example} with "
            f"{name}={mixture!r}. Drop it from `{name}` or change those."
        )


def check_text_mixture(text_mixture, answer_format="caption_first"):
    """`text_mixture` (`None` or a dict of text-only sources to weights > 0, its
    `described_vqa` needing `answer_format="caption_first"`), else a ValueError naming
    the argument."""
    if text_mixture is None:
        return None
    if (
        not isinstance(text_mixture, dict) or not text_mixture
        or set(text_mixture) - set(TEXT_ONLY_SOURCES)
        or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0 for w in text_mixture.values())
    ):
        raise ValueError(
            "`text_mixture` feeds the text stage, which sees no image: a dict mapping sources "
            f"among {TEXT_ONLY_SOURCES} to weights > 0, or None for Shakespeare alone. "
            f"Received: text_mixture={text_mixture!r}"
        )
    _check_description_sources(list(text_mixture), text_mixture, answer_format, 1, name="text_mixture")
    return dict(text_mixture)


def check_answer_format(answer_format):
    """`answer_format` if it is one of `ANSWER_FORMATS`, else a ValueError naming them."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(
            f"`answer_format` must be one of {ANSWER_FORMATS}: 'direct' answers alone, "
            "'caption_first' describes the scene before answering, 'caption_checks' also "
            "checks each slot of that description for the item a question names. "
            f"Received: answer_format={answer_format!r}"
        )
    return answer_format


MAX_QUESTIONS_PER_EXAMPLE = 10  # the fewest questions a scene has


def check_questions_per_example(questions_per_example):
    questions_per_example = check_int("questions_per_example", questions_per_example)
    if questions_per_example > MAX_QUESTIONS_PER_EXAMPLE:
        raise ValueError(
            f"`questions_per_example` must be an int from 1 to {MAX_QUESTIONS_PER_EXAMPLE} "
            "(every scene has at least that many questions). "
            f"Received: questions_per_example={questions_per_example!r}"
        )
    return questions_per_example


def check_question_type_repeats(question_type_repeats):
    """`None` or a dict question type -> int >= 0 (checked); returns a dict (maybe empty)."""
    if question_type_repeats is None:
        return {}
    if not isinstance(question_type_repeats, dict):
        raise ValueError(
            "`question_type_repeats` must be a dict question type -> int >= 0. "
            f"Received: question_type_repeats={question_type_repeats!r}"
        )
    for kind, count in question_type_repeats.items():
        if kind not in fashion_scenes.QUESTION_TYPES:
            raise ValueError(
                f"`question_type_repeats` must map question types {fashion_scenes.QUESTION_TYPES} "
                f"to ints >= 0. Received: question_type_repeats={question_type_repeats!r}"
            )
        check_int(f"question_type_repeats[{kind!r}]", count, minimum=0)
    if question_type_repeats and not any(
        question_type_repeats.get(kind, 1) for kind in fashion_scenes.QUESTION_TYPES
    ):
        raise ValueError(
            "`question_type_repeats` leaves no question (every type repeated 0 times). "
            f"Received: question_type_repeats={question_type_repeats!r}"
        )
    return {kind: int(count) for kind, count in question_type_repeats.items()}


def turns_length(preprocessor, questions_per_example, answer_format="direct"):
    """Tokens the longest `questions_per_example`-question VQA example takes once packed
    by `preprocessor` (start token, image span, every turn with its `<eos>`), over all
    FashionScenes questions and answers (with `answer_format="caption_first"`, the
    longest caption and the longest focus before the longest answer; with
    `"caption_checks"`, four checks of the longest word as well): what
    `sequence_length + 1` must hold."""
    from vishwam_keras.models.tokenizer import START_OF_IMAGE_TOKEN

    tokenizer = preprocessor.tokenizer

    def longest(prefix):
        return max(len(np.asarray(tokenizer(prefix + q + VQA_PROMPT_SUFFIX))) for q in fashion_scenes.QUESTIONS)

    expansion = preprocessor.image_expansion if preprocessor.image_converter is not None else ""
    first = longest(VQA_PROMPT_PREFIX.replace(START_OF_IMAGE_TOKEN, expansion))
    follow_up = longest(FOLLOW_UP_PREFIX)
    if check_answer_format(answer_format) == "direct":
        answer = max(len(np.asarray(tokenizer(" " + a))) for a in fashion_scenes.ANSWERS)
    else:
        longest_answer = max(fashion_scenes.ANSWERS, key=lambda a: len(np.asarray(tokenizer(" " + a))))
        checks = ""
        if answer_format == "caption_checks":  # every focus counted with checks: an upper bound
            word = max(CHECK_WORDS, key=lambda w: len(np.asarray(tokenizer(" " + w))))
            checks = CHECK_SEPARATOR + " ".join([word] * len(fashion_scenes.POSITIONS))
        answer = longest_caption_length(tokenizer) + max(
            len(np.asarray(tokenizer(f". {focus}{checks}{ANSWER_SEPARATOR}{longest_answer}")))
            for focus in set(fashion_scenes.QUESTION_FOCUS)
        )
    end = int(preprocessor.add_end_token)
    return (
        int(preprocessor.add_start_token) + first + (questions_per_example - 1) * follow_up
        + questions_per_example * (answer + end)
    )


def longest_caption_length(tokenizer):
    """Tokens of the longest FashionScenes caption (with its leading space), over every
    arrangement of classes: `tokenizer` is applied to all 10,000 of them."""
    names = range(fashion_mnist.NUM_CLASSES)
    labels = np.stack(np.meshgrid(names, names, names, names, indexing="ij"), -1).reshape(-1, 4)
    tokens = tokenizer([" " + fashion_scenes.caption(row) for row in labels])
    if hasattr(tokens, "row_lengths"):  # a tf.RaggedTensor (TensorFlow backend)
        return int(tokens.row_lengths().numpy().max())
    return max(len(row) for row in tokens)


def _multi_question_examples(pool, indices, qa, seed, repeat, shuffle, turns, respond):
    """One example per scene with `turns` of its questions (see `vqa_examples`)."""
    splits = np.searchsorted(qa[:, 0], np.arange(len(indices) + 1)).astype(np.int64)
    if (np.diff(splits) < turns).any():
        raise ValueError(
            f"`questions_per_example={turns}` but some scenes have only "
            f"{int(np.diff(splits).min())} questions of the kept types."
        )
    pool, indices, qa = tf.constant(pool), tf.constant(indices), tf.constant(qa)
    splits = tf.constant(splits)
    questions, _ = _qa_strings()
    first = tf.constant([True] + [False] * (turns - 1))
    seed_value = tf.constant(int(seed), tf.int64)

    def to_example(scene, position):
        start, count = splits[scene], splits[scene + 1] - splits[scene]
        key = tf.stack([seed_value, position * len(_STREAMS) + _STREAMS["vqa"]])
        order = tf.argsort(tf.random.stateless_uniform([count], seed=key))[:turns]
        rows = tf.gather(qa, start + tf.cast(order, tf.int64))
        asked = tf.gather(questions, rows[:, 1])
        prompts = tf.where(
            first,
            tf.strings.join([VQA_PROMPT_PREFIX, asked, VQA_PROMPT_SUFFIX]),
            tf.strings.join([FOLLOW_UP_PREFIX, asked, VQA_PROMPT_SUFFIX]),
        )
        return {
            "prompts": prompts,
            "responses": respond(scene, rows[:, 1], rows[:, 2]),
            "images": _scene_image(pool, indices[scene]),
            "image_mask": tf.ones((1,), tf.int32),
        }

    scenes = _indices(int(indices.shape[0]), seed, "vqa", repeat, shuffle)
    positions = tf.data.Dataset.counter()
    return tf.data.Dataset.zip((scenes, positions)).map(
        to_example, num_parallel_calls=tf.data.AUTOTUNE
    )


def as_turns(examples, turns):
    """Single-turn examples -> `turns`-turn ones (`prompts` / `responses` of shape
    `(turns,)`, the rest `""`), so they mix with multi-question VQA examples."""
    turns = check_questions_per_example(turns)
    if turns == 1:
        return examples
    padding = tf.constant([""] * (turns - 1), tf.string)

    def widen(example):
        example = dict(example)
        for key in ("prompts", "responses"):
            example[key] = tf.concat([example[key][None], padding], axis=0)
        return example

    return examples.map(widen, num_parallel_calls=tf.data.AUTOTUNE)


def mix_examples(datasets, weights, seed=0):
    """Interleaves example datasets, drawing each next example's source with `weights`.

    The draws are stateless (`seed` and the example's position). Ends when the drawn
    source is exhausted (sources built with `repeat=True` never are).
    """
    weights = np.asarray(weights, np.float64)
    if len(datasets) != len(weights) or not len(weights) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(
            "`weights` must be non-negative, one per dataset, with a positive sum. "
            f"Received: {weights}"
        )
    if len(datasets) == 1:
        return datasets[0]
    logits = tf.constant(np.log(np.maximum(weights / weights.sum(), 1e-30))[None], tf.float32)
    seed = tf.constant(int(seed), tf.int64)
    stream = tf.constant(_STREAMS["mixture"], tf.int64)

    def draw(position):
        key = tf.stack([seed, position * len(_STREAMS) + stream])
        return tf.random.stateless_categorical(logits, 1, seed=key, dtype=tf.int64)[0, 0]

    choices = tf.data.Dataset.counter().map(draw)
    return tf.data.Dataset.choose_from_datasets(datasets, choices, stop_on_empty_dataset=True)


# === Stage datasets ===
def text_stage_dataset(
    batch_size,
    sequence_chars=DEFAULT_SEQUENCE_CHARS,
    seed=0,
    split="train",
    repeat=False,
    image_slots=True,
    drop_remainder=False,
):
    """Stage 1 (`text_pretraining`): batches of Shakespeare chunks.

    Args:
        batch_size: int. Examples per batch.
        sequence_chars: int. Characters per chunk (about 4 per token). Defaults to `512`.
        seed: int. Shuffling seed. Defaults to `0`.
        split: str. `"train"` or `"validation"`. Defaults to `"train"`.
        repeat: bool. Repeat forever, reshuffling each epoch. Defaults to `False`.
        image_slots: bool. Add black `images` with `image_mask` 0 (see module doc).
            Defaults to `True`.
        drop_remainder: bool. Drop a last, smaller batch. Defaults to `False`.

    Returns:
        A `tf.data.Dataset` of dicts: `prompts` `(batch,)` `""`, `responses` `(batch,)`,
        and with `image_slots`, `images` uint8 `(batch, 1, 56, 56, 1)`, `image_mask`
        int32 `(batch, 1)`.

    Example:
    >>> batch = next(iter(text_stage_dataset(2)))
    >>> batch["images"].shape
    TensorShape([2, 1, 56, 56, 1])
    """
    check_int("batch_size", batch_size)
    examples = text_examples(split, sequence_chars, seed, repeat, image_slots)
    return _finish(examples, batch_size, drop_remainder)


def alignment_stage_dataset(
    split="train",
    batch_size=32,
    num_scenes=None,
    seed=0,
    repeat=False,
    scene_seed=fashion_scenes.DEFAULT_SEED,
    data_dir=None,
    drop_remainder=False,
):
    """Stage 2 (`vision_alignment`): batches of scene captions.

    Args:
        split: str. One of `fashion_scenes.SPLITS`. Defaults to `"train"`.
        batch_size: int. Examples per batch. Defaults to `32`.
        num_scenes: int, optional. Defaults to `fashion_scenes.DEFAULT_NUM_SCENES[split]`.
        seed: int. Shuffling seed. Defaults to `0`.
        repeat: bool. Repeat forever, reshuffling each epoch. Defaults to `False`.
        scene_seed: int. Scene placement seed. Defaults to `fashion_scenes.DEFAULT_SEED`.
        data_dir: str, optional. Fashion-MNIST folder (see `load_fashion_mnist`).
        drop_remainder: bool. Drop a last, smaller batch. Defaults to `False`.

    Returns:
        A `tf.data.Dataset` of dicts: `prompts` `"<start_of_image> Caption:"`,
        `responses` `" a sneaker and ..."`, `images` uint8 `(batch, 1, 56, 56, 1)`,
        `image_mask` int32 `(batch, 1)` of ones.
    """
    check_int("batch_size", batch_size)
    examples = caption_examples(split, num_scenes, seed, repeat, scene_seed, data_dir)
    return _finish(examples, batch_size, drop_remainder)


def multimodal_stage_dataset(
    split="train",
    batch_size=32,
    mixture=None,
    num_scenes=None,
    seed=0,
    repeat=False,
    scene_seed=fashion_scenes.DEFAULT_SEED,
    data_dir=None,
    sequence_chars=DEFAULT_SEQUENCE_CHARS,
    drop_remainder=False,
    questions_per_example=1,
    question_type_repeats=None,
    answer_format="direct",
):
    """Stage 3 (`multimodal_finetuning`): captions, VQA and optionally text, mixed per example.

    Args:
        split: str. One of `fashion_scenes.SPLITS`; text uses Shakespeare's `"train"` for
            `"train"` and its `"validation"` works otherwise. Defaults to `"train"`.
        batch_size: int. Examples per batch. Defaults to `32`.
        mixture: dict source -> weight, sources `"caption"`, `"vqa"`, `"text"`,
            `"counterfactual_vqa"` (`counterfactual_vqa_examples`) and `"described_vqa"`
            (`described_vqa_examples`, text only); the last two need
            `answer_format="caption_first"` and one question per example.
            Defaults to `{"caption": 0.3, "vqa": 0.7}`.
        num_scenes, seed, repeat, scene_seed, data_dir, drop_remainder: as in
            `alignment_stage_dataset`.
        sequence_chars: int. Text chunk length. Defaults to `512`.
        questions_per_example: int. Questions of one scene per VQA example
            (`vqa_examples`). With more than 1, every example is multi-turn: `prompts`
            and `responses` are `(batch, questions_per_example)`, captions and text
            filling only the first turn. Defaults to `1`.
        question_type_repeats: dict, optional. How many times each question of a type
            appears per VQA epoch (see `vqa_examples`). Defaults to once each.
        answer_format: str. `"direct"` (answers alone), `"caption_first"` (each VQA
            response is the caption, the question's focus, `ANSWER_SEPARATOR`, then the
            answer) or `"caption_checks"` (the same with slot checks for questions that
            name an item; see `vqa_examples`). Defaults to `"direct"`.

    Returns:
        A `tf.data.Dataset` of dicts shaped as in `alignment_stage_dataset`. Without
        `repeat` it ends when the first drawn source runs out.
    """
    check_int("batch_size", batch_size)
    turns = check_questions_per_example(questions_per_example)
    check_question_type_repeats(question_type_repeats)
    check_answer_format(answer_format)
    mixture = dict(DEFAULT_MIXTURE if mixture is None else mixture)
    unknown = sorted(set(mixture) - set(MIXTURE_SOURCES))
    if unknown or not mixture:
        raise ValueError(
            f"`mixture` must map sources from {MIXTURE_SOURCES} to weights. Received: {mixture!r}"
        )
    sources = [name for name in MIXTURE_SOURCES if mixture.get(name, 0) > 0]
    _check_description_sources(sources, mixture, answer_format, turns)
    builders = {
        "text": lambda: text_examples(_text_split(split), sequence_chars, seed, repeat),
        "caption": lambda: caption_examples(split, num_scenes, seed, repeat, scene_seed, data_dir),
        "vqa": lambda: vqa_examples(
            split, num_scenes, seed, repeat, scene_seed, data_dir, questions_per_example=turns,
            question_type_repeats=question_type_repeats, answer_format=answer_format,
        ),
        "counterfactual_vqa": lambda: counterfactual_vqa_examples(
            split, num_scenes, seed, repeat, scene_seed, data_dir
        ),
        "described_vqa": lambda: described_vqa_examples(
            split, num_scenes, seed, repeat, scene_seed, data_dir
        ),
    }
    weights = [mixture[name] for name in sources]
    datasets = [builders[name]() for name in sources]
    if turns > 1:
        datasets = [
            data if name == "vqa" else as_turns(data, turns) for name, data in zip(sources, datasets)
        ]
    examples = mix_examples(datasets, weights, seed)
    return _finish(examples, batch_size, drop_remainder)


def stage_datasets(
    batch_size,
    split="train",
    num_scenes=None,
    seed=0,
    repeat=False,
    mixture=None,
    sequence_chars=DEFAULT_SEQUENCE_CHARS,
    data_dir=None,
    drop_remainder=False,
    questions_per_example=1,
    question_type_repeats=None,
    answer_format="direct",
    text_mixture=None,
):
    """The three stage datasets, keyed by `STAGE_NAMES` (the default curriculum's stages).

    `split` picks the scene split (`text_pretraining` reads Shakespeare's `"train"`
    for `"train"` and its `"validation"` works otherwise). Pass `repeat=True` to train
    with `run_curriculum`, which runs a fixed number of steps per stage.
    `questions_per_example`, `question_type_repeats` and `answer_format` shape the
    fine-tuning stage's VQA examples (see `multimodal_stage_dataset`). `text_mixture`
    (`None`: Shakespeare alone) is the text stage's data as a mixture of text-only
    sources, `"text"` and `"described_vqa"` (which needs `answer_format="caption_first"`):
    `{"text": 0.5, "described_vqa": 0.5}` also reads questions answered from written
    scene descriptions before any image is seen.
    """
    text, alignment, multimodal = STAGE_NAMES
    if text_mixture is None:
        text_data = text_stage_dataset(
            batch_size, sequence_chars, seed, _text_split(split), repeat, drop_remainder=drop_remainder
        )
    else:
        check_text_mixture(text_mixture, answer_format)
        text_data = multimodal_stage_dataset(
            split, batch_size, text_mixture, num_scenes, seed, repeat, data_dir=data_dir,
            sequence_chars=sequence_chars, drop_remainder=drop_remainder, answer_format=answer_format,
        )
    return {
        text: text_data,
        alignment: alignment_stage_dataset(
            split, batch_size, num_scenes, seed, repeat, data_dir=data_dir, drop_remainder=drop_remainder
        ),
        multimodal: multimodal_stage_dataset(
            split, batch_size, mixture, num_scenes, seed, repeat, data_dir=data_dir,
            sequence_chars=sequence_chars, drop_remainder=drop_remainder,
            questions_per_example=questions_per_example,
            question_type_repeats=question_type_repeats, answer_format=answer_format,
        ),
    }
