"""benchmarks/quality.py's bookkeeping: the verdicts against the targets and the baseline's
data mixture (the scores themselves come from `vishwam_keras.evaluation`, tested there)."""

import dataclasses

import pytest

from benchmarks import quality
from vishwam_keras.training.curriculum import default_curriculum
from vishwam_keras.training.pipeline import AdvancedTrainingConfig


def _table(model_vqa, baseline_vqa):
    metrics = lambda vqa, r10, bleu: {"VQA accuracy": vqa, "image->text R@10": r10, "caption BLEU-4": bleu}
    return {
        "chance": metrics(0.176, 0.052, 0.25),
        quality.BASELINE_LABEL: metrics(baseline_vqa, None, 0.70),
        "ours": metrics(model_vqa, 0.95, 0.55),
    }


def test_target_verdicts_say_what_is_met_and_by_how_much_the_rest_is_missed():
    lines = "\n".join(quality.target_lines(_table(0.6, 0.5), "ours"))
    assert "| VQA accuracy >= 80% | 60.0% (chance 17.6) | missed by 20.0 points |" in lines
    assert "| image->text R@10 >= 90% | 95.0% (chance 5.2) | met |" in lines
    assert "| caption BLEU-4 >= 0.6 | 0.550 | missed by 5.0 points |" in lines
    # Ahead on VQA, behind on BLEU; the baseline has no retrieval to compare.
    assert "ahead on VQA accuracy (the baseline has no image->text R@10 to compare)" in lines
    behind = "\n".join(quality.target_lines(_table(0.4, 0.5), "ours"))
    assert "missed: the baseline is ahead" in behind


def test_baseline_mixture_weights_each_source_by_the_steps_that_read_it():
    config = AdvancedTrainingConfig(
        curriculum_stages=default_curriculum(1000, fractions=(0.1, 0.2, 0.7)), total_steps=1000
    )
    mixture = quality.curriculum_mixture(config, {"caption": 0.4, "vqa": 0.6})
    assert mixture == pytest.approx({"text": 0.1, "caption": 0.2 + 0.7 * 0.4, "vqa": 0.7 * 0.6})
    default = quality.curriculum_mixture(config)  # the pipelines' DEFAULT_MIXTURE, 0.3 / 0.7
    assert default == pytest.approx({"text": 0.1, "caption": 0.2 + 0.7 * 0.3, "vqa": 0.7 * 0.7})
    # every pipelines source passes through, counterfactual VQA included
    mixture = quality.curriculum_mixture(config, {"caption": 0.4, "vqa": 0.4, "counterfactual_vqa": 0.2})
    assert mixture == pytest.approx(
        {"text": 0.1, "caption": 0.2 + 0.7 * 0.4, "vqa": 0.7 * 0.4, "counterfactual_vqa": 0.7 * 0.2}
    )
    # a text stage that also reads described VQA splits its steps between its sources
    mixture = quality.curriculum_mixture(config, {"caption": 0.4, "vqa": 0.6}, {"text": 1, "described_vqa": 3})
    assert mixture == pytest.approx(
        {"text": 0.025, "described_vqa": 0.075, "caption": 0.2 + 0.7 * 0.4, "vqa": 0.7 * 0.6}
    )


def test_a_preset_without_metadata_gets_the_training_scripts_own_defaults(tmp_path):
    from vishwam_keras.training.pipeline import FASHION_MIXTURE

    training = quality.preset_training_record(str(tmp_path))
    assert quality.preset_finetuning_mixture(training) == FASHION_MIXTURE
    stages = quality.preset_training_settings(training)["curriculum_stages"]
    assert stages[1].trainable == "all"  # the script trains the language model in alignment
    # A record saved before the mixture was written means the pipelines' default.
    assert quality.preset_finetuning_mixture({"total_steps": 10}) == {"caption": 0.3, "vqa": 0.7}
    # The VQA draw of the script's defaults, and none for an old record.
    import inspect
    from vishwam_keras.training.pipeline import train_fashion_preset

    defaults = inspect.signature(train_fashion_preset).parameters
    expected = {key: defaults[key].default for key in quality.VQA_DATA_FIELDS}
    assert quality.preset_vqa_data(training) == {k: v for k, v in expected.items() if v is not None}
    assert quality.preset_vqa_data({"total_steps": 10}) == {}
    # the script's sequence_length=None: the length its answer format needs
    from vishwam_keras.training.pipeline import fashion_sequence_length

    assert training["sequence_length"] == fashion_sequence_length(1, defaults["answer_format"].default)


def test_baseline_leaves_out_stages_that_train_only_the_contrastive_heads():
    stages = [dataclasses.asdict(s) for s in default_curriculum(1000, fractions=(0.1, 0.2, 0.7))]
    heads = {"name": "retrieval_alignment", "steps": 600, "modalities": ["text", "vision"],
             "trainable": ["contrastive*"], "data_mixture": {"image_text": 1.0},
             "loss_scales": {"language_modeling": 0.0}}
    training = {"total_steps": 1000, "batch_size": 16, "seed": 0, "stages": stages + [heads]}
    config = quality.baseline_training_config(training)
    assert [s.name for s in config.stages()] == ["all"] and config.stages()[0].steps == 1000
    mixture = quality.curriculum_mixture(config, {"caption": 0.4, "vqa": 0.6})
    assert mixture == pytest.approx({"text": 0.1, "caption": 0.2 + 0.7 * 0.4, "vqa": 0.7 * 0.6})


def test_baseline_model_has_the_preset_vocabulary():
    from vishwam_keras.config import FASHION_TINY_CONFIG

    training = {"total_steps": 100, "batch_size": 16, "seed": 0}
    # A record from before the vocabulary was recorded: the shipped 8192 pieces.
    assert quality.baseline_training_config(training).model == FASHION_TINY_CONFIG
    config = quality.baseline_training_config({**training, "vocabulary_size": 2048})
    assert config.model.vocabulary_size == 2048
    assert config.model.embed_dim == FASHION_TINY_CONFIG.embed_dim
