"""Quality benchmark: the trained `vishwam_tiny_fashion` on FashionScenes, beside baselines.

For each split (`test`, `compositional_test`), `vishwam_keras.evaluation.evaluate_all` scores

- VQA: exact match of greedy answers (stripped, lower case), overall and per question type;
- captions: BLEU-4 (`keras_hub.metrics.Bleu`) and per-slot accuracy of the parsed caption;
- retrieval: image -> caption and caption -> image Recall@1/5/10 by cosine similarity of
  `embed_images` / `embed_texts`;

beside these baselines:

- chance: a uniform guess among a question type's answers (exact), uniformly random
  captions, a uniformly random ranking (exact);
- majority: the most frequent training answer per question type; the caption of each
  position's most frequent training class;
- question prior: the most frequent training answer per question (a blind model);
- with `--with-baseline`, a PaliGemma-style baseline: a model of the same size trained on
  the same data, for the same steps, with the same seed, but with all data mixed from the
  first step (no curriculum) and the language-model loss only (no contrastive loss).
  KerasHub's text-only `Gemma3CausalLM` (no vision encoder, as the 1B preset) cannot see
  images at all, and KerasHub's multimodal Gemma 3 / PaliGemma bring a SigLIP-So400m
  encoder and a 262k vocabulary, so they cannot be trained at this size on this data for
  a like-for-like comparison: the baseline is our own model trained the PaliGemma way.
  It has no contrastive heads, so it has no retrieval scores.

Writes `benchmarks/RESULTS_quality.md` and `benchmarks/quality.png`.

    python -m benchmarks.quality                                # 1000 scenes per split
    python -m benchmarks.quality --num-scenes 100 --splits test # quicker
    python -m benchmarks.quality --with-baseline                # also train the baseline
    python -m benchmarks.quality --random-init --num-scenes 4   # smoke test, untrained model
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
PRESET = "vishwam_tiny_fashion"
SPLITS = ("test", "compositional_test")
# Training settings a preset's metadata.json may record under "training"; the baseline reuses them.
SHARED_TRAINING_FIELDS = (
    "total_steps", "batch_size", "sequence_length", "learning_rate", "weight_decay",
    "warmup_steps", "seed",
)
# How the fine-tuning stage's VQA examples were drawn (`pipelines.multimodal_stage_dataset`).
VQA_DATA_FIELDS = ("questions_per_example", "question_type_repeats", "answer_format")
# Which data source each default curriculum stage trains on (`pipelines.stage_datasets`).
STAGE_SOURCES = {"text_pretraining": "text", "vision_alignment": "caption"}


# === Models ===
def load_preset_model(preset, random_init):
    """`(model, label)`: the trained preset, or an untrained `FASHION_TINY_CONFIG` model."""
    from vishwam_keras.demo import load_fashion_model, random_fashion_model

    if random_init:
        return random_fashion_model(), "untrained (random init)"
    model, trained = load_fashion_model(preset, allow_random=False)
    return model, preset


def preset_training_record(preset):
    """How the preset was trained: its `metadata.json`'s `"training"` record, else the
    defaults of `training.pipeline.train_fashion_preset` (the script that trains it)."""
    import inspect

    from vishwam_keras import safety
    from vishwam_keras.models import presets
    from vishwam_keras.training import pipeline
    from vishwam_keras.training.curriculum import default_curriculum

    training = {}
    try:
        metadata = safety.load_json_file(os.path.join(presets.resolve_preset(preset), "metadata.json"))
        training = metadata.get("training") or {}
    except ValueError:  # no readable metadata.json: fall back to the script's defaults
        pass
    if not training:
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(pipeline.train_fashion_preset).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
        training = {key: defaults[key] for key in SHARED_TRAINING_FIELDS if key in defaults}
        if "total_steps" in training and "fractions" in defaults:
            training["stages"] = default_curriculum(
                training["total_steps"], fractions=defaults["fractions"],
                freeze_language_model_in_alignment=defaults["freeze_language_model_in_alignment"],
            )
        training["finetuning_mixture"] = pipeline.FASHION_MIXTURE  # the script's `mixture=None`
        training.update({key: defaults[key] for key in VQA_DATA_FIELDS if key in defaults})
        if training.get("sequence_length") is None:  # the script's `sequence_length=None`
            training["sequence_length"] = pipeline.fashion_sequence_length(
                training.get("questions_per_example", 1), training.get("answer_format", "direct")
            )
    return training


def preset_training_settings(training):
    """`AdvancedTrainingConfig` fields from a `preset_training_record`.

    Stages whose language-model term is 0 (`train_fashion_preset`'s `retrieval_alignment`,
    which trains only the contrastive heads) are left out: the baseline has no contrastive
    heads, so it trains for the steps that train the language model, on their data.
    """
    from vishwam_keras.training.curriculum import CurriculumStage
    from vishwam_keras.training.losses import LANGUAGE_MODELING

    settings = {key: training[key] for key in SHARED_TRAINING_FIELDS if key in training}
    stages = [
        stage for stage in map(CurriculumStage.from_dict, training.get("stages") or [])
        if (stage.loss_scales or {}).get(LANGUAGE_MODELING, 1.0) > 0
    ]
    if stages:
        settings["curriculum_stages"] = stages
    return settings


def preset_finetuning_mixture(training):
    """The fine-tuning stage's caption / VQA mixture of a `preset_training_record`; presets
    saved before it was recorded were trained on `pipelines.DEFAULT_MIXTURE`."""
    from vishwam_keras.data.pipelines import DEFAULT_MIXTURE

    return dict(training.get("finetuning_mixture") or DEFAULT_MIXTURE)


def preset_vqa_data(training):
    """`multimodal_stage_dataset` keyword arguments for the VQA data of a
    `preset_training_record`; a record without them means the pipelines' defaults."""
    return {key: training[key] for key in VQA_DATA_FIELDS if training.get(key) is not None}


def baseline_training_config(training, steps=None, seed=None):
    """The training config of a `preset_training_record` with `use_curriculum=False`,
    `use_contrastive_loss=False`.

    `steps` rescales the preset's stages (for the mixture) to that many steps in all.
    """
    from vishwam_keras.training import pipeline
    from vishwam_keras.training.curriculum import as_stages

    settings = preset_training_settings(training)
    if steps is not None:
        stages = settings.pop("curriculum_stages", None)
        if stages:
            stages = as_stages(stages)
            total = sum(stage.steps for stage in stages)
            settings["curriculum_stages"] = [
                dataclasses.replace(stage, steps=max(1, round(stage.steps * steps / total))) for stage in stages
            ]
        settings["total_steps"] = steps
    if seed is not None:
        settings["seed"] = seed
    # The preset's vocabulary (recorded since the 2048-piece option; 8192 before).
    settings["model"] = pipeline.fashion_model_config(training.get("vocabulary_size"))
    return dataclasses.replace(
        pipeline.SMALL_MODEL_TRAINING_CONFIG, use_curriculum=False, use_contrastive_loss=False, **settings
    )


def curriculum_mixture(config, finetuning_mixture=None, text_mixture=None):
    """The curriculum's data as one mixture: each source weighted by the steps that read it.

    `text_pretraining` reads `text_mixture` (`None`: Shakespeare alone), `vision_alignment`
    captions, and `multimodal_finetuning` (or any other stage) `finetuning_mixture`
    (defaults to `pipelines.DEFAULT_MIXTURE`).
    """
    from vishwam_keras.data.pipelines import DEFAULT_MIXTURE, MIXTURE_SOURCES
    from vishwam_keras.training.curriculum import as_stages, default_curriculum

    finetuning_mixture = DEFAULT_MIXTURE if finetuning_mixture is None else finetuning_mixture
    stage_mixtures = {name: {source: 1.0} for name, source in STAGE_SOURCES.items()}
    if text_mixture:
        stage_mixtures["text_pretraining"] = text_mixture
    stages = as_stages(config.curriculum_stages or default_curriculum(config.total_steps))
    mixture = dict.fromkeys(MIXTURE_SOURCES, 0.0)
    for stage in stages:
        read = stage_mixtures.get(stage.name, finetuning_mixture)
        total_weight = float(sum(read.values()))
        for name, weight in read.items():
            mixture[name] += stage.steps * weight / total_weight
    total = sum(mixture.values())
    return {name: weight / total for name, weight in mixture.items() if weight > 0}


def train_baseline(preset, steps=None, seed=None, num_train_scenes=None, reference=None):
    """Train the PaliGemma-style baseline with `main_training_pipeline` (one stage, mixed data).

    The pipeline builds the model from the config (`FASHION_TINY_CONFIG` with the preset's
    vocabulary size: the preset's architecture) after seeding, as the preset's own run
    does; with `reference` (the preset's model) the two backbones' parameter counts are
    checked to match.

    Returns:
        `(model, config, data mixture, training seconds)`.
    """
    from vishwam_keras.data.pipelines import multimodal_stage_dataset
    from vishwam_keras.training.pipeline import main_training_pipeline

    training = preset_training_record(preset)
    config = baseline_training_config(training, steps, seed)
    mixture = curriculum_mixture(config, preset_finetuning_mixture(training), training.get("text_mixture"))
    print(f"Baseline: {config.total_steps} steps, batch {config.batch_size}, seed {config.seed}, "
          f"no curriculum, no contrastive loss; data mixture {_format_mixture(mixture)}")
    dataset = multimodal_stage_dataset(
        "train", config.batch_size, mixture=mixture, num_scenes=num_train_scenes, seed=config.seed,
        repeat=True, drop_remainder=True, **preset_vqa_data(training),
    )
    start = time.perf_counter()
    model = main_training_pipeline(dataset, config).model
    seconds = time.perf_counter() - start
    if reference is not None and reference.backbone.count_params() != model.backbone.count_params():
        print(f"WARNING: the baseline backbone has {model.backbone.count_params():,} parameters, the "
              f"preset's {reference.backbone.count_params():,}: they are not the same size.")
    return model, config, mixture, seconds


def _format_mixture(mixture):
    return ", ".join(f"{name} {weight:.0%}" for name, weight in mixture.items())


# === Report ===
def system_tables(results_by_split, baseline_results_by_split, label):
    """`{split: {system: {metric: value}}}` for the table and the plot."""
    from vishwam_keras import evaluation

    tables = {}
    for split, results in results_by_split.items():
        systems = evaluation.system_metrics(results)
        table = {
            "chance": systems["chance"],
            "majority": systems["majority"],
            "question prior": systems["question_prior"],
        }
        if split in baseline_results_by_split:
            table[BASELINE_LABEL] = evaluation.system_metrics(baseline_results_by_split[split])["model"]
        table[label] = systems["model"]
        tables[split] = table
    return tables


# The targets for the shipped preset on the test split: (metric, at least, shown
# as a percentage rather than a score).
TARGETS = (("VQA accuracy", 0.80, True), ("image->text R@10", 0.90, True), ("caption BLEU-4", 0.60, False))
BASELINE_LABEL = "PaliGemma-style baseline"


def target_lines(table, label):
    """Markdown rows `| target | reached | verdict |` for `TARGETS` and the baseline race."""
    ours = table[label]
    lines = ["| target | reached | verdict |", "|---|---:|---|"]
    for metric, goal, percent in TARGETS:
        goal_text = f"{100 * goal:.0f}%" if percent else f"{goal:.1f}"
        value = ours.get(metric)
        if value is None:
            lines.append(f"| {metric} >= {goal_text} | - | not measured |")
            continue
        shown = f"{100 * value:.1f}%" if percent else f"{value:.3f}"
        chance = table["chance"].get(metric)
        if chance is not None and percent:
            shown += f" (chance {100 * chance:.1f})"
        verdict = "met" if value >= goal else f"missed by {100 * (goal - value):.1f} points"
        lines.append(f"| {metric} >= {goal_text} | {shown} | {verdict} |")
    if BASELINE_LABEL in table:
        baseline = table[BASELINE_LABEL]
        compared = [
            (metric, ours[metric], baseline[metric]) for metric, _, _ in TARGETS
            if ours.get(metric) is not None and baseline.get(metric) is not None
        ]
        cells = ", ".join(f"{metric} {100 * a:.1f} vs {100 * b:.1f}" for metric, a, b in compared)
        ahead = [metric for metric, a, b in compared if a > b]
        verdict = "met" if len(ahead) == len(compared) else (
            f"ahead on {', '.join(ahead)}" if ahead else "missed: the baseline is ahead"
        )
        missing = [metric for metric, _, _ in TARGETS if metric not in {m for m, _, _ in compared}]
        if missing:
            verdict += f" (the baseline has no {', '.join(missing)} to compare)"
        lines.append(f"| ahead of the {BASELINE_LABEL} (same model, data, steps, seed; no "
                     f"curriculum, no contrastive loss) | {cells} | {verdict} |")
    return lines


def save_plot(tables, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from vishwam_keras.evaluation import HEADLINE_METRICS

    figure, axes = plt.subplots(1, len(tables), figsize=(7.5 * len(tables), 7), squeeze=False)
    for axis, (split, table) in zip(axes[0], tables.items()):
        names = list(table)
        height = 0.8 / len(names)
        positions = np.arange(len(HEADLINE_METRICS))
        for i, name in enumerate(names):
            values = [table[name].get(metric) for metric in HEADLINE_METRICS]
            values = [np.nan if v is None else 100 * v for v in values]
            axis.barh(positions + i * height, values, height, label=name)
        axis.set_yticks(positions + 0.4 - height / 2)
        axis.set_yticklabels(HEADLINE_METRICS)
        axis.invert_yaxis()
        axis.set_xlim(0, 100)
        axis.set_xlabel("%")
        axis.set_title(f"FashionScenes {split}")
        axis.grid(axis="x", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    figure.tight_layout(rect=(0, 0.05, 1, 1))  # leave the bottom strip to the legend
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _json_ready(results):
    """Results without the generated texts, for the Markdown's raw numbers."""
    return {
        split: {key: value for key, value in result.items() if key not in ("predictions",)}
        for split, result in results.items()
    }


def write_report(path, tables, results, baseline_results, args, label, seconds, baseline_info):
    import keras

    from vishwam_keras.evaluation import format_table

    lines = [
        "# FashionScenes quality benchmark",
        "",
        f"Model: `{label}`. {datetime.date.today().isoformat()}, keras {keras.__version__} "
        f"({keras.backend.backend()}), {platform.processor() or platform.machine()}, "
        f"`python -m benchmarks.quality {' '.join(sys.argv[1:])}`.",
        "",
        "All numbers are percentages; greedy decoding; the first "
        f"{args.num_scenes} scenes of each split (the committed test scenes). "
        "Majority baselines count the first "
        f"{args.baseline_train_scenes} train scenes.",
        "",
    ]
    if "test" in tables:
        lines += [f"## Against the targets (test split, {args.num_scenes} scenes)", ""]
        lines += target_lines(tables["test"], label) + [""]
    for split, table in tables.items():
        lines += [f"## {split}", "", format_table(table), ""]
        timing = results[split]["seconds"]
        lines += [
            "Evaluation time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()) + ".",
            "",
        ]
    lines += [
        "## Baselines",
        "",
        "- chance: a uniform guess among the question type's answers (10 classes, 5 counts, "
        "yes/no), exact; captions of uniformly random classes (slot accuracy exactly 10%, "
        "BLEU-4 of one seeded draw: the caption template alone earns BLEU); retrieval of a "
        "uniformly random ranking, exact.",
        "- majority: the most frequent training answer per question type; for captions, "
        "each position's most frequent training class.",
        "- question prior: the most frequent training answer per question text (a model "
        "that reads the question but not the image).",
        "- PaliGemma-style baseline: " + (baseline_info or "not run (pass `--with-baseline`)."),
        "- KerasHub's text-only `Gemma3CausalLM` (no vision encoder, like the 1B preset) "
        "cannot see the images, so it has no place in this table; KerasHub's multimodal "
        "Gemma 3 and PaliGemma bring a SigLIP-So400m encoder and a 262k vocabulary and are "
        "not trainable at this size on this data for a like-for-like comparison. The "
        "PaliGemma-style baseline is therefore our own model, trained the PaliGemma way.",
        "",
        f"Total time: {seconds:.0f} s. Plot: `quality.png`.",
        "",
        "<details><summary>Raw results (JSON)</summary>",
        "",
        "```json",
        json.dumps({"model": _json_ready(results), "baseline": _json_ready(baseline_results)},
                   indent=1, default=float),
        "```",
        "",
        "</details>",
        "",
    ]
    with open(path, "w") as file:
        file.write("\n".join(lines))
    return path


# === Main ===
def evaluate_splits(model, label, args):
    """`evaluate_all` on each split, greedy throughout (compiled generate functions are kept)."""
    from vishwam_keras import evaluation

    results = {}
    with evaluation.greedy_sampling(model):
        for split in args.splits:
            print(f"\n=== {label} on {split} ({args.num_scenes} scenes) ===")
            results[split] = evaluation.evaluate_all(
                model, args.num_scenes, split, batch_size=args.batch_size,
                baseline_train_scenes=args.baseline_train_scenes,
            )
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-scenes", type=int, default=1000, help="scenes per split")
    parser.add_argument("--preset", default=PRESET)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--baseline-train-scenes", type=int, default=10000,
                        help="train scenes the majority baselines count")
    parser.add_argument("--with-baseline", action="store_true",
                        help="train and score the PaliGemma-style baseline (no curriculum, no contrastive loss)")
    parser.add_argument("--baseline-steps", type=int, default=None,
                        help="default: the preset's recorded steps, else the pipeline's default")
    parser.add_argument("--baseline-seed", type=int, default=None)
    parser.add_argument("--baseline-train-data-scenes", type=int, default=None,
                        help="train scenes the baseline reads (default: the whole train split)")
    parser.add_argument("--random-init", action="store_true",
                        help="score an untrained model instead of the preset (a smoke test)")
    parser.add_argument("--output-dir", default=None,
                        help="default: benchmarks/ (a temporary folder with --random-init)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from vishwam_keras import evaluation

    start = time.perf_counter()
    output_dir = args.output_dir or (tempfile.mkdtemp(prefix="quality_") if args.random_init else HERE)
    os.makedirs(output_dir, exist_ok=True)
    try:
        model, label = load_preset_model(args.preset, args.random_init)
    except FileNotFoundError as error:
        raise SystemExit(f"{error}\nOr smoke-test this script on an untrained model: --random-init")
    baseline, baseline_info = None, None
    if args.with_baseline:
        baseline, config, mixture, train_seconds = train_baseline(
            args.preset, args.baseline_steps, args.baseline_seed, args.baseline_train_data_scenes,
            reference=model,
        )
        baseline_info = (
            f"the same architecture trained for {config.total_steps} steps (batch "
            f"{config.batch_size}, seed {config.seed}, learning rate {config.learning_rate}) on "
            f"the curriculum's data mixed from the first step ({_format_mixture(mixture)}), "
            f"language-model loss only; {train_seconds:.0f} s of training. No contrastive heads, "
            "so no retrieval scores."
        )
    results = evaluate_splits(model, label, args)
    baseline_results = evaluate_splits(baseline, "PaliGemma-style baseline", args) if baseline is not None else {}
    tables = system_tables(results, baseline_results, label)
    for split, table in tables.items():
        print(f"\n{split} ({args.num_scenes} scenes, %):\n{evaluation.format_table(table)}")
    seconds = time.perf_counter() - start
    plot = save_plot(tables, os.path.join(output_dir, "quality.png"))
    report = write_report(
        os.path.join(output_dir, "RESULTS_quality.md"), tables, results, baseline_results, args,
        label, seconds, baseline_info,
    )
    print(f"\nWrote {report} and {plot} ({seconds:.0f} s).")
    return results


if __name__ == "__main__":
    main()
