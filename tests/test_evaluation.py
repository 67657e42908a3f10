import math

import numpy as np
import pytest

from conftest import requires_fashion_mnist
from vishwam_keras import evaluation
from vishwam_keras.data import fashion_mnist, fashion_scenes
from vishwam_keras.data.pipelines import CAPTION_PROMPT


def _hand_made_scenes(labels):
    """`Scenes` from labels alone, with random pixels: no Fashion-MNIST needed."""
    labels = np.asarray(labels, np.uint8)
    rng = np.random.default_rng(0)
    return fashion_scenes.Scenes(
        split="test",
        seed=0,
        images=rng.integers(0, 256, (len(labels), 56, 56, 1)).astype("uint8"),
        labels=labels,
        image_indices=np.zeros(labels.shape, np.int64),
        captions=[fashion_scenes.caption(row) for row in labels],
        qa=[fashion_scenes.question_answers(row, i) for i, row in enumerate(labels)],
    )


LABELS = [[7, 8, 3, 4], [0, 1, 2, 9], [5, 5, 6, 0]]


class FakeModel:
    """Answers like an oracle from a table keyed by (prompt, image), except where told not to.

    Records each `generate` call's batch size and `max_length`.
    """

    contrastive_alignment = None
    preprocessor = None

    def __init__(self, table, wrong=lambda prompt: False):
        self.table = table
        self.wrong = wrong
        self.calls = []

    def generate(self, inputs, max_length=None, strip_prompt=False):
        assert strip_prompt
        self.calls.append((len(inputs["prompts"]), max_length))
        outputs = []
        for prompt, images in zip(inputs["prompts"], inputs["images"]):
            answer = self.table[(prompt, np.asarray(images[0]).tobytes())]
            outputs.append("not it" if self.wrong(prompt) else f"  {answer.upper()} ")
        return outputs


def _oracle_table(scenes):
    table = {}
    for index, qa in evaluation.flatten_questions(scenes):
        table[(evaluation.vqa_prompt(qa.question), scenes.images[index].tobytes())] = qa.answer
    for index, caption in enumerate(scenes.captions):
        table[(CAPTION_PROMPT, scenes.images[index].tobytes())] = caption
    return table


# === Text ===
def test_prompts_match_the_training_pipeline():
    assert evaluation.vqa_prompt("Is there a bag?") == "<start_of_image> Question: Is there a bag? Answer:"
    assert evaluation.normalize_answer("  A Sneaker \n") == "a sneaker"


def test_parse_caption():
    assert evaluation.parse_caption(" a sneaker and a bag above a dress and a coat") == [7, 8, 3, 4]
    assert evaluation.parse_caption("An ankle boot and a t-shirt above a shirt and a  trouser") == [9, 0, 6, 1]
    assert evaluation.parse_caption("a cat and a bag above a dress and a coat") == [-1, 8, 3, 4]
    assert evaluation.parse_caption("a sneaker and a bag") is None
    assert evaluation.parse_caption("") is None
    for row in np.random.default_rng(1).integers(0, 10, (20, 4)):
        assert evaluation.parse_caption(fashion_scenes.caption(row)) == row.tolist()


# === VQA ===
def test_vqa_scores_by_hand():
    predictions = [" Two", "yes", "a bag", "an ankle boot ", "zero", "no"]
    answers = ["two", "no", "a bag", "an ankle boot", "one", "no"]
    types = ["count", "exists", "position", "relation", "count", "exists"]
    scores = evaluation.vqa_scores(predictions, answers, types)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["per_type"] == {"position": 1.0, "count": 0.5, "exists": 0.5, "relation": 1.0}
    assert scores["per_type_count"] == {"position": 1, "count": 2, "exists": 2, "relation": 1}
    assert list(scores["per_type"]) == list(fashion_scenes.QUESTION_TYPES)
    with pytest.raises(ValueError, match="one entry per question"):
        evaluation.vqa_scores(["a"], [], [])


def test_vqa_scores_read_the_answer_after_a_caption_first_description():
    caption = " a sneaker and a bag above a dress and a coat"
    predictions = [
        caption + ". a bag: yes",
        caption + ". right of the bag: a bag",
        caption,
        " no. a coat: no",
        caption + ". shoes:",
    ]
    answers = ["yes", "a dress", "a coat", "no", "two"]
    types = ["exists", "relation", "position", "exists", "count"]
    scores = evaluation.vqa_scores(predictions, answers, types)
    # the description names "a dress" and ends with "a coat", but only the answer counts
    assert scores["per_type"] == {"position": 0.0, "count": 0.0, "exists": 1.0, "relation": 0.0}
    assert evaluation.final_answer(caption + ". shoes: one: two") == "two"


def test_evaluate_vqa_with_a_fake_model_batches_and_scores():
    scenes = _hand_made_scenes(LABELS)
    model = FakeModel(_oracle_table(scenes), wrong=lambda prompt: "How many" in prompt)
    result = evaluation.evaluate_vqa(model, scenes, batch_size=8, verbose=False, return_predictions=True)
    questions = evaluation.flatten_questions(scenes)
    counts = sum(qa.question_type == "count" for _, qa in questions)
    assert result["count"] == len(questions) == len(result["predictions"])
    assert result["accuracy"] == pytest.approx(1 - counts / len(questions))
    assert result["per_type"] == {"position": 1.0, "count": 0.0, "exists": 1.0, "relation": 1.0}
    # Every call is a full batch (the last one padded), so compiled functions are reused.
    assert [size for size, _ in model.calls] == [8] * math.ceil(len(questions) / 8)
    assert evaluation.evaluate_vqa(model, scenes, num_scenes=1, verbose=False)["count"] == len(scenes.qa[0])


# === Captions ===
def test_bleu4_on_known_strings():
    reference = "a sneaker and a bag above a dress and a coat"
    assert evaluation.bleu4([reference], [reference]) == pytest.approx(1.0)
    # One word of 11 replaced: n-gram precisions 10/11, 9/10, 8/9, 7/8; no brevity penalty.
    substituted = "a sneaker and a bag above a dress and a shirt"
    assert evaluation.bleu4([reference], [substituted]) == pytest.approx((7 / 11) ** 0.25, abs=1e-6)
    # Corpus BLEU pools the counts: (21/22 * 19/20 * 17/18 * 15/16) ** (1/4).
    expected = (21 / 22 * 19 / 20 * 17 / 18 * 15 / 16) ** 0.25
    assert evaluation.bleu4([reference] * 2, [reference, substituted]) == pytest.approx(expected, abs=1e-6)
    # A prefix of 8 tokens: all precisions 1, brevity penalty exp(1 - 11/8).
    short = "a sneaker and a bag above a dress"
    assert evaluation.bleu4([reference], [short]) == pytest.approx(math.exp(1 - 11 / 8), abs=1e-6)


def test_caption_scores_by_hand():
    labels = [[7, 8, 3, 4], [0, 1, 2, 9], [5, 5, 6, 0]]
    predictions = [
        " A sneaker and a bag above a dress and a coat",
        "a t-shirt and a bag above a pullover and an ankle boot",  # top right wrong
        "nothing like a caption",
    ]
    scores = evaluation.caption_scores(predictions, labels)
    assert scores["slot_accuracy"] == pytest.approx(7 / 12)
    assert scores["per_position"] == pytest.approx(
        {"top left": 2 / 3, "top right": 1 / 3, "bottom left": 2 / 3, "bottom right": 2 / 3}
    )
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["parse_rate"] == pytest.approx(2 / 3)
    references = [fashion_scenes.caption(row) for row in labels]
    assert scores["bleu4"] == pytest.approx(evaluation.bleu4(references, predictions))
    assert scores["count"] == 3


def test_evaluate_captions_with_a_fake_model():
    scenes = _hand_made_scenes(LABELS)
    model = FakeModel(_oracle_table(scenes))
    result = evaluation.evaluate_captions(model, scenes, batch_size=2, verbose=False)
    assert result["slot_accuracy"] == result["exact_match"] == result["bleu4"] == pytest.approx(1.0)
    assert [size for size, _ in model.calls] == [2, 2]


# === Retrieval ===
# Images are the unit axes, so image i's cosine with text j is text j's i-th entry over its norm.
IMAGES = np.eye(3)
TEXTS = np.array([[1.0, 0.1, 0.05], [0.0, 0.2, 1.0], [0.3, 1.0, 0.5]])


def test_retrieval_recalls_by_hand():
    # Image 0 ranks texts 0, 2, 1; image 1: 2, 1, 0; image 2: 1, 2, 0 -> true text at ranks 1, 2, 2.
    # Text 0 ranks images 0, 1, 2; text 1: 2, 1, 0; text 2: 1, 2, 0 -> true image at ranks 1, 2, 2.
    result = evaluation.retrieval_recalls(5.0 * IMAGES, TEXTS, ks=(1, 2, 3))
    expected = {"R@1": 1 / 3, "R@2": 1.0, "R@3": 1.0}
    assert result["image_to_text"] == pytest.approx(expected)
    assert result["text_to_image"] == pytest.approx(expected)
    assert result["count"] == 3


def test_retrieval_recalls_with_duplicate_captions():
    # Texts 0 and 2 are the same caption: image 2 retrieving text 0 first is a hit.
    relevance = evaluation.caption_relevance(["a", "b", "a"])
    assert relevance.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    images = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    texts = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 1.0]])
    result = evaluation.retrieval_recalls(images, texts, relevance, ks=(1,))
    assert result["image_to_text"]["R@1"] == pytest.approx(1.0)
    # Text 2 ranks image 1 first (cosine 0.89 against 0.45 and 0.54): a miss.
    assert result["text_to_image"]["R@1"] == pytest.approx(2 / 3)


def test_retrieval_recalls_against_brute_force():
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    result = evaluation.retrieval_recalls(images, texts, ks=(1, 3, 5))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    similarity = unit(images) @ unit(texts).T
    for k in (1, 3, 5):
        rank_i2t = [(similarity[i] > similarity[i, i]).sum() for i in range(12)]
        rank_t2i = [(similarity[:, j] > similarity[j, j]).sum() for j in range(12)]
        assert result["image_to_text"][f"R@{k}"] == pytest.approx(np.mean(np.array(rank_i2t) < k))
        assert result["text_to_image"][f"R@{k}"] == pytest.approx(np.mean(np.array(rank_t2i) < k))


def test_chance_recalls_are_exact():
    chance = evaluation.chance_recalls(np.eye(10, dtype=bool), ks=(1, 5, 10))
    assert chance["image_to_text"] == pytest.approx({"R@1": 0.1, "R@5": 0.5, "R@10": 1.0})
    # Two relevant among four: P(one in the top 1) = 1/2, top 2: 1 - C(2,2)/C(4,2) = 5/6.
    relevance = np.array([[1, 1, 0, 0]] * 4, bool)
    assert evaluation.chance_recalls(relevance, ks=(1, 2))["image_to_text"] == pytest.approx(
        {"R@1": 0.5, "R@2": 5 / 6}
    )
    # A random ranking, simulated, agrees.
    rng = np.random.default_rng(0)
    hits = [(rng.permutation(4)[:2] < 2).any() for _ in range(20000)]
    assert np.mean(hits) == pytest.approx(5 / 6, abs=0.01)


def test_a_model_without_contrastive_heads_has_no_retrieval():
    result = evaluation.evaluate_retrieval(FakeModel({}), _hand_made_scenes(LABELS), verbose=False)
    assert result["available"] is False


# === Baselines ===
def test_vqa_baselines_by_hand():
    scenes = _hand_made_scenes(LABELS[:1])  # sneaker, bag / dress, coat
    train = [
        ("What is in the top left?", "a bag", "position"),
        ("What is in the top right?", "a bag", "position"),
        ("What is in the top left?", "a sneaker", "position"),
        ("How many shoes are there?", "one", "count"),
        ("How many bags are there?", "zero", "count"),
        ("How many bags are there?", "zero", "count"),
        ("Is there a bag?", "yes", "exists"),
    ]
    per_type, per_question = evaluation.majority_answers(train)
    assert per_type == {"position": "a bag", "count": "zero", "exists": "yes"}
    assert per_question["How many shoes are there?"] == "one"
    result = evaluation.vqa_baselines(scenes, train)
    questions = [qa for _, qa in evaluation.flatten_questions(scenes)]
    types = [qa.question_type for qa in questions]
    expected_chance = np.mean([1 / evaluation.ANSWER_CHOICES[t] for t in types])
    assert result["chance"]["accuracy"] == pytest.approx(expected_chance)
    assert result["chance"]["per_type"] == pytest.approx(
        {"position": 0.1, "count": 0.2, "exists": 0.5, "relation": 0.1}
    )
    # Majority "a bag" is right for the top-right question only (1 of 4 positions).
    assert result["majority"]["per_type"]["position"] == pytest.approx(1 / 4)
    answers = {qa.question: qa.answer for qa in questions}
    expected_count = np.mean([answers[f"How many {g} are there?"] == "zero" for g in fashion_mnist.GROUPS])
    assert result["majority"]["per_type"]["count"] == pytest.approx(expected_count)


def test_caption_baselines():
    labels = np.array(LABELS)
    train = np.array([[8, 8, 0, 8], [8, 1, 0, 4], [0, 1, 3, 4]])  # majority per position: 8, 1, 0, 4
    result = evaluation.caption_baselines(labels, train)
    assert result["majority"]["caption"] == "a bag and a trouser above a t-shirt and a coat"
    # Right: the coat of [7, 8, 3, 4] and the trouser of [0, 1, 2, 9]; nothing of [5, 5, 6, 0].
    assert result["majority"]["slot_accuracy"] == pytest.approx(2 / 12)
    assert result["chance"]["slot_accuracy"] == pytest.approx(0.1)
    assert 0.0 <= result["chance"]["bleu4"] <= 1.0


def test_headline_metrics_and_table():
    systems = {
        "chance": evaluation.headline_metrics({"accuracy": 0.25, "per_type": {"count": 0.2}}),
        "model": evaluation.headline_metrics(
            {"accuracy": 0.5}, {"slot_accuracy": 0.75, "bleu4": float("nan")},
            {"image_to_text": {"R@1": 0.125}},
        ),
    }
    assert list(systems["model"]) == list(evaluation.HEADLINE_METRICS)
    table = evaluation.format_table(systems)
    assert "| VQA accuracy | 25.0 | 50.0 |" in table
    assert "| VQA count | 20.0 | - |" in table
    assert "| caption BLEU-4 | - | - |" in table
    assert "| image->text R@1 | - | 12.5 |" in table


# === A real (tiny, untrained) model end to end ===
def _tiny_model(sequence_length=48):
    from vishwam_keras import MultimodalConfig
    from vishwam_keras.models.factory import create_multimodal_model, create_preprocessor

    config = MultimodalConfig(
        embed_dim=32, num_heads=2, num_kv_heads=1, num_layers=2, intermediate_dim=64,
        sliding_window_size=16, sliding_window_pattern=2, vision_embed_dim=16, vision_num_layers=1,
        vision_num_heads=2, image_size=56, patch_size=14, num_vision_tokens=4, num_channels=1,
    )
    return create_multimodal_model(config, preprocessor=create_preprocessor(config, sequence_length))


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny_model()


def test_tiny_model_end_to_end(tiny_model):
    model = tiny_model
    scenes = _hand_made_scenes(LABELS[:2])
    vqa = evaluation.evaluate_vqa(model, scenes, batch_size=64, verbose=False, return_predictions=True)
    assert vqa["count"] == len(evaluation.flatten_questions(scenes)) == len(vqa["predictions"])
    assert 0.0 <= vqa["accuracy"] <= 1.0
    captions = evaluation.evaluate_captions(model, scenes, batch_size=2, verbose=False)
    assert 0.0 <= captions["slot_accuracy"] <= 1.0 and 0.0 <= captions["bleu4"] <= 1.0
    retrieval = evaluation.evaluate_retrieval(model, scenes, batch_size=2, verbose=False)
    assert retrieval["available"] and retrieval["count"] == 2
    assert set(retrieval["image_to_text"]) == {"R@1", "R@5", "R@10"}
    # Greedy inside, the model's own sampler after.
    assert type(model.sampler).__name__ == "TopKSampler"


@requires_fashion_mnist
def test_evaluate_all_on_two_test_scenes(tiny_model):
    results = evaluation.evaluate_all(tiny_model, num_scenes=2, batch_size=64, baseline_train_scenes=50, verbose=False)
    assert results["split"] == "test" and results["num_scenes"] == 2
    assert set(results["baselines"]) >= {"chance", "majority", "question_prior"}
    systems = evaluation.system_metrics(results)
    assert set(systems) == {"chance", "majority", "question_prior", "model"}
    assert systems["chance"]["VQA exists"] == pytest.approx(0.5)
    assert systems["chance"]["image->text R@1"] == pytest.approx(0.5)


# === The demo and the command line ===
def test_scene_grid_png(tmp_path):
    from vishwam_keras.demo import _shown_questions, save_scene_grid

    scenes = _hand_made_scenes(LABELS)
    predictions = [qa.answer for _, qa in evaluation.flatten_questions(scenes)]
    shown = _shown_questions(scenes, predictions, 2)
    assert [len(rows) for rows in shown] == [4, 4]
    assert [q for q, _, _ in shown[0]][:2] == ["What is in the top left?", "How many tops are there?"]
    path = save_scene_grid(scenes.images[:2], ["x" * 300, "a bag"], scenes.captions[:2], shown,
                           str(tmp_path / "grid.png"), "title")
    with open(path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"


def test_missing_preset_says_how_to_train_it():
    from vishwam_keras.demo import TRAIN_COMMAND, load_fashion_model

    with pytest.raises(FileNotFoundError, match="demo --train"):
        load_fashion_model("no_such_preset", allow_random=False)
    assert TRAIN_COMMAND == "python -m vishwam_keras demo --train"


def test_cli_parser():
    from vishwam_keras.__main__ import build_parser

    parser = build_parser()
    args = parser.parse_args(["demo"])
    assert (args.train, args.text, args.preset, args.output) == (False, False, "vishwam_tiny_fashion", "demo_scenes.png")
    assert parser.parse_args(["demo", "--train"]).train
    args = parser.parse_args(["demo", "--text", "--seconds", "5", "--seed", "3"])
    assert (args.text, args.seconds, args.seed) == (True, 5.0, 3)
    args = parser.parse_args(
        ["generate", "--preset", "vishwam_tiny_fashion", "--image", "scene.png", "--prompt", "Caption:"]
    )
    assert (args.image, args.prompt, args.sampler) == (["scene.png"], ["Caption:"], None)
    assert parser.parse_args(["info"]).command == "info"
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--prompt", "x"])  # --preset is required


def test_cli_demo_dispatch(monkeypatch):
    from vishwam_keras import __main__ as cli
    from vishwam_keras import demo

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: calls.append(("fashion", kwargs)))
    monkeypatch.setattr(demo, "run_text_demo", lambda **kwargs: calls.append(("text", kwargs)))
    cli.main(["demo"])
    cli.main(["demo", "--train", "--num-scenes", "3"])
    cli.main(["demo", "--text", "--seconds", "2"])
    assert [name for name, _ in calls] == ["fashion", "fashion", "text"]
    assert calls[0][1]["train"] is False and calls[1][1]["train"] is True
    assert calls[1][1]["num_scenes"] == 3 and calls[2][1] == {"seconds": 2.0, "seed": 0}


def test_cli_images_any_size_and_mode(tmp_path):
    from PIL import Image

    from vishwam_keras.__main__ import _generate_inputs, load_image

    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(30 * 40, dtype=np.uint8).reshape(30, 40)).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((20, 20, 4), 200, np.uint8)).save(rgba)
    assert load_image(str(gray)).shape == (30, 40, 3) and load_image(str(gray)).dtype == np.uint8
    assert load_image(str(rgba)).shape == (20, 20, 3)
    inputs = _generate_inputs(["Caption:", "<start_of_image> Question: Is there a bag? Answer:"], [str(gray)])
    assert inputs["prompts"] == ["<start_of_image> Caption:", "<start_of_image> Question: Is there a bag? Answer:"]
    assert [len(images) for images in inputs["images"]] == [1, 1]
    assert _generate_inputs(["Caption:"], []) == ["Caption:"]
    with pytest.raises(SystemExit):
        _generate_inputs(["a", "b", "c"], [str(gray), str(rgba)])


def test_cli_generate_with_an_image(tmp_path, capsys):
    from PIL import Image

    from vishwam_keras.__main__ import main

    preset = str(tmp_path / "preset")
    _tiny_model().save_to_preset(preset)
    image = tmp_path / "scene.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(image)
    main(["generate", "--preset", preset, "--image", str(image), "--prompt", "Caption:", "--max-length", "40"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("Caption:")
