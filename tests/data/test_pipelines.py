import numpy as np
import pytest
import tensorflow as tf

from conftest import requires_fashion_mnist
from vishwam_keras import VishwamCausalLMPreprocessor, VishwamImageConverter
from vishwam_keras.data import fashion_scenes, pipelines


TOKENS_PER_IMAGE = 4
IMAGE_TOKEN = "<image_soft_token>"


@pytest.fixture
def preprocessor():
    # Built after conftest's `keras.utils.set_random_seed`: resetting TF's seed after the
    # SentencePiece op exists breaks that op inside tf.data ("Resource ... does not exist").
    preprocessor = VishwamCausalLMPreprocessor.from_preset("vishwam_1b", sequence_length=48)
    preprocessor.image_converter = VishwamImageConverter(image_size=56, num_channels=1)
    preprocessor.num_vision_tokens_per_image = TOKENS_PER_IMAGE
    return preprocessor


def _check_batch(batch, batch_size):
    assert sorted(batch) == ["image_mask", "images", "prompts", "responses"]
    assert batch["images"].shape == (batch_size, 1, 56, 56, 1) and batch["images"].dtype == tf.uint8
    assert batch["image_mask"].shape == (batch_size, 1) and batch["image_mask"].dtype == tf.int32
    assert batch["prompts"].shape == batch["responses"].shape == (batch_size,)
    prompts = [p.decode() for p in batch["prompts"].numpy()]
    mask = batch["image_mask"].numpy()[:, 0]
    # an image slot is used exactly when the prompt has a placeholder for it
    assert [p.count("<start_of_image>") for p in prompts] == mask.tolist()
    assert not batch["images"].numpy()[mask == 0].any()


def _check_preprocessed(preprocessor, batch, in_tf_data=False):
    """The preprocessor's output for a batch: eagerly, or traced in `dataset.map` as `fit` does."""
    image_token = preprocessor.tokenizer.token_to_id(IMAGE_TOKEN)
    if in_tf_data:
        outputs = next(iter(tf.data.Dataset.from_tensors(batch).map(preprocessor)))
    else:
        outputs = preprocessor(batch)
    for x, y, w in [outputs]:
        batch_size = batch["prompts"].shape[0]
        assert x["token_ids"].shape == (batch_size, 48)
        assert tuple(x["images"].shape) == (batch_size, 1, 56, 56, 1)
        assert x["images"].dtype == tf.float32
        image_tokens = (np.asarray(x["token_ids"]) == image_token).sum(1)
        np.testing.assert_array_equal(image_tokens, TOKENS_PER_IMAGE * batch["image_mask"].numpy()[:, 0])
        assert (np.asarray(w).sum(1) > 0).all()  # every example has response tokens to learn
        assert not np.asarray(w)[np.asarray(y) == image_token].any()


def test_text_stage_feeds_the_preprocessor(preprocessor):
    batch = next(iter(pipelines.text_stage_dataset(3, sequence_chars=64, seed=1)))
    _check_batch(batch, 3)
    assert set(batch["prompts"].numpy().tolist()) == {b""}
    assert all(0 < len(r) <= 64 for r in batch["responses"].numpy().tolist())
    _check_preprocessed(preprocessor, batch)
    plain = next(iter(pipelines.text_stage_dataset(2, sequence_chars=64, image_slots=False)))
    assert sorted(plain) == ["prompts", "responses"]


def test_text_chunks_are_bounded_and_validation_is_held_out():
    train = pipelines.shakespeare_chunks("train", 256)
    validation = pipelines.shakespeare_chunks("validation", 256)
    assert max(len(c) for c in train + validation) <= 256
    assert 50 < len(validation) < len(train) / 20
    assert not set(train) & set(validation)
    with pytest.raises(ValueError, match="sequence_chars"):
        pipelines.shakespeare_chunks("train", 8)


@requires_fashion_mnist
def test_alignment_stage_matches_the_scenes_and_feeds_the_preprocessor(preprocessor):
    scenes = fashion_scenes.make_scenes("test", 6)
    examples = list(pipelines.caption_examples("test", 6, shuffle=False).as_numpy_iterator())
    assert [e["responses"].decode() for e in examples] == [" " + c for c in scenes.captions]
    assert {e["prompts"].decode() for e in examples} == {"<start_of_image> Caption:"}
    np.testing.assert_array_equal(np.stack([e["images"] for e in examples]), scenes.images[:, None])
    batch = next(iter(pipelines.alignment_stage_dataset("test", 4, num_scenes=6)))
    _check_batch(batch, 4)
    _check_preprocessed(preprocessor, batch)


@requires_fashion_mnist
def test_vqa_examples_match_the_scenes():
    scenes = fashion_scenes.make_scenes("compositional_test", 3)
    examples = list(pipelines.vqa_examples("compositional_test", 3, shuffle=False).as_numpy_iterator())
    expected = [(i, item) for i in range(3) for item in scenes.qa[i]]
    assert len(examples) == len(expected)
    for example, (scene, item) in zip(examples, expected):
        assert example["prompts"].decode() == f"<start_of_image> Question: {item.question} Answer:"
        assert example["responses"].decode() == " " + item.answer
        np.testing.assert_array_equal(example["images"][0], scenes.images[scene])
    counts = list(pipelines.vqa_examples("compositional_test", 3, question_types=["count"], shuffle=False))
    assert len(counts) == 12
    with pytest.raises(ValueError, match="Unknown question types"):
        pipelines.vqa_examples("test", 3, question_types=["colour"])


@requires_fashion_mnist
def test_multimodal_stage_mixes_sources_and_feeds_the_preprocessor(preprocessor):
    mixture = {"caption": 0.2, "vqa": 0.5, "text": 0.3}
    dataset = pipelines.multimodal_stage_dataset("test", 8, mixture=mixture, num_scenes=20, repeat=True)
    batches = list(dataset.take(25).as_numpy_iterator())
    prompts = [p.decode() for b in batches for p in b["prompts"]]
    fractions = {
        "text": prompts.count("") / 200,
        "caption": prompts.count("<start_of_image> Caption:") / 200,
        "vqa": sum(p.startswith("<start_of_image> Question:") for p in prompts) / 200,
    }
    for name, weight in mixture.items():
        assert abs(fractions[name] - weight) < 0.1, fractions
    batch = next(iter(dataset))
    _check_batch(batch, 8)
    _check_preprocessed(preprocessor, batch)


@requires_fashion_mnist
def test_mixed_batches_preprocess_inside_tf_data(preprocessor):
    mixture = {"caption": 1.0, "vqa": 1.0, "text": 1.0}
    batch = next(iter(pipelines.multimodal_stage_dataset("test", 12, mixture, num_scenes=5, sequence_chars=64)))
    assert 0 < batch["image_mask"].numpy().sum() < 12  # text and image examples together
    _check_preprocessed(preprocessor, batch, in_tf_data=True)
    vqa_only = next(iter(pipelines.multimodal_stage_dataset("test", 16, {"vqa": 1.0, "text": 0.0}, 5)))
    assert all(p.startswith(b"<start_of_image> Question:") for p in vqa_only["prompts"].numpy())
    with pytest.raises(ValueError, match="mixture"):
        pipelines.multimodal_stage_dataset("test", 4, {"speech": 1.0}, 5)


@requires_fashion_mnist
def test_shuffling_is_seeded_and_reshuffles_each_epoch():
    def responses(seed):
        examples = pipelines.caption_examples("test", 8, seed=seed, repeat=True).take(16)
        return [e["responses"] for e in examples.as_numpy_iterator()]

    first = responses(5)
    tf.random.set_seed(123)  # the global seed must not matter
    assert responses(5) == first
    assert responses(6) != first
    assert sorted(first[:8]) == sorted(first[8:]) and first[:8] != first[8:]
    assert len(set(first[:8])) == len(set(first[8:]))


@requires_fashion_mnist
def test_stage_datasets_for_the_default_curriculum():
    datasets = pipelines.stage_datasets(2, split="test", num_scenes=4, sequence_chars=64)
    assert list(datasets) == ["text_pretraining", "vision_alignment", "multimodal_finetuning"]
    structures = {name: tf.nest.map_structure(lambda s: (s.shape.as_list(), s.dtype), d.element_spec)
                  for name, d in datasets.items()}
    assert len({str(s) for s in structures.values()}) == 1  # one structure: stages can be mixed
    for dataset in datasets.values():
        _check_batch(next(iter(dataset)), 2)
    assert int(datasets["vision_alignment"].cardinality()) == 2
    with pytest.raises(ValueError, match="batch_size"):
        pipelines.alignment_stage_dataset("test", 0)


@requires_fashion_mnist
def test_stage_datasets_text_stage_reads_its_text_mixture():
    datasets = pipelines.stage_datasets(
        8, split="test", num_scenes=10, sequence_chars=64, repeat=True, answer_format="caption_first",
        text_mixture={"described_vqa": 1.0},
    )
    batch = next(iter(datasets["text_pretraining"]))
    _check_batch(batch, 8)
    assert all(p.decode().startswith("Question: ") for p in batch["prompts"].numpy())
    assert not batch["image_mask"].numpy().any()  # the text stage sees no image
    for text_mixture in ({"text": 0.5, "caption": 0.5}, {"vqa": 1.0}):
        with pytest.raises(ValueError, match="text_mixture"):
            pipelines.stage_datasets(8, split="test", num_scenes=10, text_mixture=text_mixture,
                                     answer_format="caption_first")


@requires_fashion_mnist
def test_multi_question_vqa_examples_are_questions_of_their_scene():
    scenes = fashion_scenes.make_scenes("test", 5)
    examples = list(
        pipelines.vqa_examples("test", 5, shuffle=False, questions_per_example=4).as_numpy_iterator()
    )
    assert len(examples) == 5  # one example per scene
    for scene, example in enumerate(examples):
        prompts = [p.decode() for p in example["prompts"]]
        responses = [r.decode() for r in example["responses"]]
        assert prompts[0].startswith("<start_of_image> Question: ") and prompts[0].endswith(" Answer:")
        assert all(p.startswith(" Question: ") and p.endswith(" Answer:") for p in prompts[1:])
        asked = [p.split("Question: ")[1][: -len(" Answer:")] for p in prompts]
        truth = {item.question: " " + item.answer for item in scenes.qa[scene]}
        assert len(set(asked)) == 4 and all(q in truth for q in asked)
        assert responses == [truth[q] for q in asked]
        np.testing.assert_array_equal(example["images"][0], scenes.images[scene])
    # seeded: the same draw twice, another seed another draw
    again = list(pipelines.vqa_examples("test", 5, shuffle=False, questions_per_example=4))
    assert all((a["prompts"].numpy() == b["prompts"]).all() for a, b in zip(again, examples))
    other = list(pipelines.vqa_examples("test", 5, seed=1, shuffle=False, questions_per_example=4))
    assert any((a["prompts"].numpy() != b["prompts"]).any() for a, b in zip(other, examples))


@requires_fashion_mnist
def test_multi_question_mixture_widens_captions_and_text(preprocessor):
    mixture = {"caption": 1.0, "vqa": 1.0, "text": 1.0}
    dataset = pipelines.multimodal_stage_dataset(
        "test", 12, mixture, num_scenes=5, sequence_chars=64, questions_per_example=3
    )
    batch = next(iter(dataset))
    assert batch["prompts"].shape == batch["responses"].shape == (12, 3)
    prompts = batch["prompts"].numpy()
    single = ~np.char.startswith(prompts[:, 0].astype(str), "<start_of_image> Question:")
    assert single.any() and (~single).any()
    assert (prompts[single, 1:] == b"").all() and (batch["responses"].numpy()[single, 1:] == b"").all()
    assert (prompts[~single, 1:] != b"").all()
    preprocessor.sequence_length = 72  # room for three questions
    x, y, w = next(iter(tf.data.Dataset.from_tensors(batch).map(preprocessor)))
    eos = preprocessor.tokenizer.end_token_id
    # one predicted <eos> per filled turn (text chunks longer than the sequence lose theirs)
    ends = ((np.asarray(y) == eos) & np.asarray(w)).sum(1)
    assert (ends[~single] == 3).all(), ends


def _single_question_examples(num_scenes, answer_format):
    """The first test scenes and their single-question VQA examples, each checked to ask
    its scene's question in order: `(scenes, examples, [(response, caption, item, focus)])`."""
    scenes = fashion_scenes.make_scenes("test", num_scenes)
    examples = list(
        pipelines.vqa_examples("test", num_scenes, shuffle=False, answer_format=answer_format).as_numpy_iterator()
    )
    expected = [(i, item) for i in range(num_scenes) for item in scenes.qa[i]]
    assert len(examples) == len(expected)
    rows = []
    for example, (scene, item) in zip(examples, expected):
        assert example["prompts"].decode() == f"<start_of_image> Question: {item.question} Answer:"
        focus = fashion_scenes.QUESTION_FOCUS[fashion_scenes.QUESTIONS.index(item.question)]
        rows.append((example["responses"].decode(), scenes.captions[scene], item, focus))
    return scenes, examples, rows


def _assert_turns_length_keeps_every_eos(preprocessor, answer_format):
    """At `turns_length - 1` tokens (the preset's 16 image tokens), no VQA example of the
    first 60 test scenes in `answer_format` loses its <eos>."""
    preprocessor.num_vision_tokens_per_image = 16  # the preset's, so the bound is the one used
    preprocessor.sequence_length = pipelines.turns_length(preprocessor, 1, answer_format) - 1
    data = pipelines.vqa_examples("test", 60, shuffle=False, answer_format=answer_format)
    for x, y, w in data.batch(256).map(preprocessor):
        ends = ((np.asarray(y) == preprocessor.tokenizer.end_token_id) & np.asarray(w)).sum(1)
        assert (ends == 1).all()


@requires_fashion_mnist
def test_caption_first_answers_describe_the_scene_then_answer(preprocessor):
    scenes, examples, rows = _single_question_examples(4, "caption_first")
    for response, caption, item, focus in rows:
        assert response == f" {caption}. {focus}: {item.answer}"
    # test scene 0, written by hand
    caption = " a sneaker and a sandal above a sandal and an ankle boot"
    assert [e["responses"].decode() for e in examples[:14:4]] == [
        caption + ". top left: a sneaker", caption + ". tops: zero", caption + ". a sandal: yes",
        caption + ". left of the ankle boot: a sandal",
    ]
    # multi-question examples: every turn describes its scene before answering
    turns = list(pipelines.vqa_examples(
        "test", 4, shuffle=False, questions_per_example=3, answer_format="caption_first"
    ).as_numpy_iterator())
    for scene, example in enumerate(turns):
        truth = {item.question: item.answer for item in scenes.qa[scene]}
        for prompt, response in zip(example["prompts"], example["responses"]):
            asked = prompt.decode().split("Question: ")[1][: -len(" Answer:")]
            focus = fashion_scenes.QUESTION_FOCUS[fashion_scenes.QUESTIONS.index(asked)]
            assert response.decode() == f" {scenes.captions[scene]}. {focus}: {truth[asked]}"
    # `turns_length` holds every caption-first example: none loses its <eos>
    _assert_turns_length_keeps_every_eos(preprocessor, "caption_first")
    longest = max(len(np.asarray(preprocessor.tokenizer(" " + c))) for c in scenes.captions)
    assert longest <= pipelines.longest_caption_length(preprocessor.tokenizer)


def _slot_checks(caption, focus):
    """Reference checks: which of the caption's four items the focus names, read from the
    words ("a sneaker and a bag above ..." and "left of the bag" -> "no yes no no")."""
    items = [item.split(" ", 1)[1] for part in caption.strip().split(" above ") for item in part.split(" and ")]
    named = focus.split(" the ", 1)[1] if " the " in focus else focus.split(" ", 1)[1]
    return " ".join("yes" if item == named else "no" for item in items)


@requires_fashion_mnist
def test_caption_checks_answers_check_each_slot_for_the_named_item(preprocessor):
    scenes, examples, rows = _single_question_examples(6, "caption_checks")
    checked = 0
    for response, caption, item, focus in rows:
        if item.question_type in ("exists", "relation"):
            checks = _slot_checks(caption, focus)
            assert response == f" {caption}. {focus}? {checks}: {item.answer}"
            # an exists answer is "yes" exactly where a check is; a relation's item is written once
            if item.question_type == "exists":
                assert ("yes" in checks.split()) == (item.answer == "yes")
            else:
                assert checks.split().count("yes") == 1
            checked += 1
        else:
            assert response == f" {caption}. {focus}: {item.answer}"
    assert checked > 30
    # test scene 0, written by hand
    caption = " a sneaker and a sandal above a sandal and an ankle boot"
    assert [e["responses"].decode() for e in examples[8:14:4]] == [
        caption + ". a sandal? no yes yes no: yes", caption + ". left of the ankle boot? no no no yes: a sandal",
    ]
    # multi-question examples carry the same checks
    turns = list(pipelines.vqa_examples(
        "test", 4, shuffle=False, questions_per_example=4, answer_format="caption_checks"
    ).as_numpy_iterator())
    for scene, example in enumerate(turns):
        truth = {item.question: item for item in scenes.qa[scene]}
        for prompt, response in zip(example["prompts"], example["responses"]):
            asked = truth[prompt.decode().split("Question: ")[1][: -len(" Answer:")]]
            focus = fashion_scenes.QUESTION_FOCUS[fashion_scenes.QUESTIONS.index(asked.question)]
            middle = f"? {_slot_checks(scenes.captions[scene], focus)}" if asked.question_type in ("exists", "relation") else ""
            assert response.decode() == f" {scenes.captions[scene]}. {focus}{middle}: {asked.answer}"
    # `turns_length` holds every caption-checks example, and counts the checks
    _assert_turns_length_keeps_every_eos(preprocessor, "caption_checks")
    assert pipelines.turns_length(preprocessor, 1, "caption_checks") > pipelines.turns_length(
        preprocessor, 1, "caption_first"
    )
    # the description sources stay caption_first only
    with pytest.raises(ValueError, match="described_vqa.*caption_first"):
        pipelines.multimodal_stage_dataset(
            "test", 4, mixture={"vqa": 1.0, "described_vqa": 0.5}, num_scenes=5, answer_format="caption_checks"
        )


@pytest.mark.parametrize("value", ["reasoning", None, 1])
def test_answer_format_is_checked(value):
    with pytest.raises(ValueError, match="answer_format"):
        pipelines.multimodal_stage_dataset("test", 4, num_scenes=5, answer_format=value)


@pytest.mark.parametrize("value", [0, 11, 2.0, True, "3"])
def test_questions_per_example_is_checked(value):
    with pytest.raises(ValueError, match="questions_per_example"):
        pipelines.multimodal_stage_dataset("test", 4, num_scenes=5, questions_per_example=value)


@requires_fashion_mnist
def test_question_type_repeats_multiply_each_type():
    def per_type(**kwargs):
        examples = pipelines.vqa_examples("test", 4, shuffle=False, **kwargs)
        kinds = {q: k for q, k in zip(fashion_scenes.QUESTIONS, fashion_scenes.QUESTION_TYPE_OF)}
        counts = dict.fromkeys(fashion_scenes.QUESTION_TYPES, 0)
        for example in examples.as_numpy_iterator():
            question = example["prompts"].decode()[len("<start_of_image> Question: "):-len(" Answer:")]
            counts[kinds[question]] += 1
        return counts

    plain = per_type()
    repeated = per_type(question_type_repeats={"exists": 3, "count": 0})
    assert repeated == {**plain, "exists": 3 * plain["exists"], "count": 0}


@pytest.mark.parametrize(
    "repeats", [{"colour": 2}, {"exists": -1}, {"exists": 1.5}, [("exists", 2)],
                dict.fromkeys(fashion_scenes.QUESTION_TYPES, 0)]
)
def test_question_type_repeats_are_checked(repeats):
    with pytest.raises(ValueError, match="question_type_repeats"):
        pipelines.multimodal_stage_dataset("test", 4, num_scenes=5, question_type_repeats=repeats)


@requires_fashion_mnist
def test_question_type_repeats_need_single_question_examples():
    with pytest.raises(ValueError, match="question_type_repeats"):
        pipelines.vqa_examples("test", 3, questions_per_example=2, question_type_repeats={"exists": 2})


@requires_fashion_mnist
def test_turns_length_holds_every_multi_question_example(preprocessor):
    preprocessor.sequence_length = pipelines.turns_length(preprocessor, 3) - 1
    examples = pipelines.vqa_examples("test", 30, shuffle=False, questions_per_example=3).batch(30)
    x, y, w = next(iter(examples.map(preprocessor)))
    ends = ((np.asarray(y) == preprocessor.tokenizer.end_token_id) & np.asarray(w)).sum(1)
    assert (ends == 3).all(), ends  # nothing cut: every turn keeps its <eos>
    assert pipelines.turns_length(preprocessor, 1) < pipelines.turns_length(preprocessor, 2)
    assert pipelines.as_turns(pipelines.caption_examples("test", 2), 1).element_spec["prompts"].shape == ()


def _labels_of_caption(caption):
    """Class ids from a caption `"a sneaker and a bag above a dress and a coat"`, parsed."""
    names = {fashion_scenes.with_article(name): c for c, name in enumerate(fashion_scenes.SHORT_NAMES)}
    top, bottom = caption.split(" above ")
    return [names[item] for row in (top, bottom) for item in row.split(" and ")]


@requires_fashion_mnist
def test_counterfactual_vqa_answers_the_edited_description(preprocessor):
    scenes = fashion_scenes.make_scenes("test", 30)
    examples = list(pipelines.counterfactual_vqa_examples("test", 30, shuffle=False).as_numpy_iterator())
    held_out = set(fashion_scenes.held_out_position_ids())
    by_scene = {}
    for example in examples:
        prompt = example["prompts"].decode()
        head, description = prompt.split(" Answer: ")
        question = head[len("<start_of_image> Question: "):]
        assert description.endswith(".")
        edited = _labels_of_caption(description[:-1])
        matches = [
            scene for scene in range(30)
            if np.array_equal(scenes.images[scene], example["images"][0])
        ]
        assert len(matches) == 1
        scene = matches[0]
        real = scenes.labels[scene].tolist()
        # one item swapped for another class, never into a held-out (class, position) pair
        assert sum(a != b for a, b in zip(edited, real)) == 1
        assert not {(c, p) for p, c in enumerate(edited)} & held_out
        # the answer is the edited scene's, read off the parsed description
        truth = {qa.question: qa.answer for qa in fashion_scenes.question_answers(edited, scene)}
        focus = fashion_scenes.QUESTION_FOCUS[fashion_scenes.QUESTIONS.index(question)]
        assert example["responses"].decode() == f" {focus}: {truth[question]}"
        by_scene.setdefault(scene, []).append(question)
    assert sorted(by_scene) == list(range(30))
    edits = {scene: _labels_of_caption(
        next(e for e in examples if np.array_equal(e["images"][0], scenes.images[scene]))["prompts"]
        .decode().split(" Answer: ")[1][:-1]) for scene in range(30)}
    for scene, questions in by_scene.items():  # every question of the edited scene, once
        assert sorted(questions) == sorted(qa.question for qa in fashion_scenes.question_answers(edits[scene], scene))
    # on some scenes the edit changes the answer: the image alone would not give it
    changed = sum(
        dict((qa.question, qa.answer) for qa in fashion_scenes.question_answers(edits[s], s)).get(q.question)
        not in (None, q.answer)
        for s in range(30) for q in scenes.qa[s]
    )
    assert changed > 30
    # the description is prompt, so the loss covers only the focus, the answer and <eos>
    preprocessor.sequence_length = 96
    batch = {key: np.stack([e[key] for e in examples[:8]]) for key in examples[0]}
    x, y, w = preprocessor(batch)
    for response, weights in zip(batch["responses"], np.asarray(w)):
        assert weights.sum() == len(np.asarray(preprocessor.tokenizer(response.decode()))) + 1
    again = list(pipelines.counterfactual_vqa_examples("test", 30, shuffle=False).take(5).as_numpy_iterator())
    assert [e["prompts"] for e in again] == [e["prompts"] for e in examples[:5]]


@requires_fashion_mnist
def test_described_vqa_answers_from_the_true_description_without_an_image(preprocessor):
    scenes = fashion_scenes.make_scenes("test", 20)
    examples = list(pipelines.described_vqa_examples("test", 20, shuffle=False).as_numpy_iterator())
    # unshuffled, one example per (scene, question) in the scenes' order
    flat = [(scene, qa) for scene in range(20) for qa in scenes.qa[scene]]
    assert len(examples) == len(flat)
    for example, (scene, qa) in zip(examples, flat):
        head, description = example["prompts"].decode().split(" Answer: ")
        assert head == f"Question: {qa.question}" and description.endswith(".")
        # the true scene's description, parsed back to its labels
        assert _labels_of_caption(description[:-1]) == scenes.labels[scene].tolist()
        focus = fashion_scenes.QUESTION_FOCUS[fashion_scenes.QUESTIONS.index(qa.question)]
        assert example["responses"].decode() == f" {focus}: {qa.answer}"
        # no image: a black slot that is masked out
        assert example["image_mask"].tolist() == [0] and not example["images"].any()
    questions_seen = [(scene, qa.question) for scene, qa in flat]
    types = {fashion_scenes.QUESTION_TYPE_OF[fashion_scenes.QUESTIONS.index(q)] for _, q in questions_seen}
    assert types == set(fashion_scenes.QUESTION_TYPES)
    # the description is prompt: the loss covers the focus, the answer and <eos>, and no
    # image token is packed
    preprocessor.sequence_length = 64
    batch = {key: np.stack([e[key] for e in examples[:8]]) for key in examples[0]}
    x, y, w = preprocessor(batch)
    image_token = preprocessor.tokenizer.token_to_id(IMAGE_TOKEN)
    assert not (np.asarray(x["token_ids"]) == image_token).any()
    for response, weights in zip(batch["responses"], np.asarray(w)):
        assert weights.sum() == len(np.asarray(preprocessor.tokenizer(response.decode()))) + 1
    shuffled = [e["prompts"] for e in pipelines.described_vqa_examples("test", 20, seed=3).as_numpy_iterator()]
    assert sorted(shuffled) == sorted(e["prompts"] for e in examples) and shuffled != [e["prompts"] for e in examples]


@requires_fashion_mnist
def test_described_vqa_mixes_with_text_and_only_for_caption_first_single_questions():
    mixture = {"text": 0.5, "described_vqa": 0.5}
    dataset = pipelines.multimodal_stage_dataset(
        "test", 8, mixture=mixture, num_scenes=20, repeat=True, answer_format="caption_first"
    )
    batches = list(dataset.take(10))
    for batch in batches:
        _check_batch(batch, 8)
    prompts = [p.decode() for b in batches for p in b["prompts"].numpy()]
    assert abs(sum(p.startswith("Question: ") for p in prompts) / 80 - 0.5) < 0.15
    assert all(p == "" or p.startswith("Question: ") for p in prompts)
    for kwargs in ({}, {"answer_format": "caption_first", "questions_per_example": 2}):
        with pytest.raises(ValueError, match="described_vqa.*caption_first"):
            pipelines.multimodal_stage_dataset("test", 8, mixture=mixture, num_scenes=20, **kwargs)


@requires_fashion_mnist
def test_counterfactual_vqa_mixes_only_with_caption_first_single_questions():
    mixture = {"caption": 0.5, "counterfactual_vqa": 0.5}
    dataset = pipelines.multimodal_stage_dataset(
        "test", 8, mixture=mixture, num_scenes=20, repeat=True, answer_format="caption_first"
    )
    prompts = [p.decode() for b in dataset.take(10).as_numpy_iterator() for p in b["prompts"]]
    edited = sum(p.startswith("<start_of_image> Question:") and p.endswith(".") for p in prompts)
    assert abs(edited / 80 - 0.5) < 0.15
    for kwargs in ({}, {"answer_format": "caption_first", "questions_per_example": 2}):
        with pytest.raises(ValueError, match="counterfactual_vqa.*caption_first"):
            pipelines.multimodal_stage_dataset("test", 8, mixture=mixture, num_scenes=20, **kwargs)
