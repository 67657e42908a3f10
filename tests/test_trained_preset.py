"""The shipped `vishwam_tiny_fashion` preset keeps its recorded scores, and a short curriculum
run on a few hundred FashionScenes learns more than chance. Both need Fashion-MNIST
(`apt-get install dataset-fashion-mnist`, as `.ci/run` does) and are skipped without it."""

import keras
import pytest

from conftest import requires_fashion_mnist
from vishwam_keras import evaluation
from vishwam_keras.models.presets import preset_metadata

PRESET = "vishwam_tiny_fashion"
NUM_SCENES = 200  # the first 200 of the committed test scenes
TOLERANCE = 0.02  # two points


# Generation for 3,162 questions and 200 captions: about a minute on 2 cores under JAX,
# several under TensorFlow, where it runs with the slow tests only. The weights are the
# same on every backend (tests/robustness/test_cross_backend.py).
SLOW_ON_TENSORFLOW = pytest.mark.slow if keras.backend.backend() == "tensorflow" else (lambda test: test)


@SLOW_ON_TENSORFLOW
@requires_fashion_mnist
def test_shipped_preset_reaches_its_recorded_test_scores():
    from vishwam_keras.demo import load_fashion_model

    recorded = preset_metadata(PRESET)["evaluation"][f"test_{NUM_SCENES}"]
    model, trained = load_fashion_model(PRESET, allow_random=False)
    assert trained
    with evaluation.greedy_sampling(model):
        vqa = evaluation.evaluate_vqa(model, "test", num_scenes=NUM_SCENES, batch_size=64, verbose=False)
        captions = evaluation.evaluate_captions(
            model, "test", num_scenes=NUM_SCENES, batch_size=64, verbose=False
        )
    assert abs(vqa["accuracy"] - recorded["vqa_accuracy"]) <= TOLERANCE, (vqa["accuracy"], recorded)
    assert abs(captions["bleu4"] - recorded["caption_bleu4"]) <= TOLERANCE, (captions["bleu4"], recorded)
    retrieval = evaluation.evaluate_retrieval(model, "test", num_scenes=NUM_SCENES, verbose=False)
    recall = retrieval["image_to_text"]["R@10"]
    assert abs(recall - recorded["image_to_text_recall_at_10"]) <= TOLERANCE, (recall, recorded)


@pytest.mark.slow
@requires_fashion_mnist
def test_short_curriculum_on_a_few_hundred_scenes_beats_chance_on_vqa(tmp_path):
    from vishwam_keras import FASHION_TINY_CONFIG, AdvancedTrainingConfig, main_training_pipeline
    from vishwam_keras.data.pipelines import stage_datasets
    from vishwam_keras.training.curriculum import default_curriculum

    config = AdvancedTrainingConfig(
        model=FASHION_TINY_CONFIG, curriculum_stages=default_curriculum(300, fractions=(0.1, 0.15, 0.75)),
        batch_size=16, sequence_length=48, learning_rate=2e-3, warmup_steps=20, seed=0,
    )
    data = stage_datasets(16, num_scenes=400, seed=0, repeat=True)
    model = main_training_pipeline(data, config, verbose=0).model
    with evaluation.greedy_sampling(model):
        result = evaluation.evaluate_vqa(model, "test", num_scenes=100, verbose=False)
    chance = evaluation.vqa_baselines(evaluation.as_scenes("test", 100), [])["chance"]["accuracy"]
    assert result["accuracy"] > chance + 0.03, (result["accuracy"], chance)
