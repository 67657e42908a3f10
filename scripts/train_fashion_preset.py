"""Reproduces `vishwam_keras/presets/vishwam_tiny_fashion` from scratch (2-core CPU).

    python scripts/train_fashion_preset.py [--steps 5000] [--checkpoint-dir DIR]

Needs Fashion-MNIST (`apt-get install dataset-fashion-mnist`); rerun with the same
`--checkpoint-dir` to resume after an interruption. Runs under TensorFlow unless
`KERAS_BACKEND` says otherwise: on 2 CPU cores (an AMD EPYC) its training steps took
about 0.3 s (about 29 minutes in all, the last stage's 0.14 s steps included) against
about 0.5 s under JAX with the earlier `caption_first` answers; the shipped
`caption_checks` run took 60 minutes on a 2-core Intel Xeon whose steps run about 1.8x
slower (benchmarks/fashion_training/README.md); with `--vocabulary-size 2048` the same
recipe took 32 minutes there, at VQA 78.0% against 82.4% on the first 200 test scenes.
Every flag's default is `training.pipeline.train_fashion_preset`'s.
"""

import argparse
import inspect
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from vishwam_keras.data import pipelines  # noqa: E402 (after the backend)
from vishwam_keras.models.tokenizer import PACKAGED_VOCABULARIES  # noqa: E402
from vishwam_keras.training.pipeline import train_fashion_preset  # noqa: E402

# The flags' defaults are the function's, so the script and the library cannot drift apart.
DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(train_fashion_preset).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


def parse_mixture(text):
    """`"caption:0.3,vqa:0.6,text:0.1"` -> `{"caption": 0.3, "vqa": 0.6, "text": 0.1}`; `None` stays `None`."""
    if not text:
        return None
    pairs = [item.split(":") for item in text.split(",")]
    try:
        return {name.strip(): float(weight) for name, weight in pairs}
    except ValueError:
        raise SystemExit(f"--mixture must look like caption:0.3,vqa:0.6,text:0.1. Received: {text!r}") from None


def parse_repeats(text):
    """`"exists:3,relation:2"` -> `{"exists": 3, "relation": 2}`; `None` stays `None`."""
    if not text:
        return None
    pairs = [item.split(":") for item in text.split(",")]
    if any(len(pair) != 2 or not pair[1].strip().isdigit() for pair in pairs):
        raise SystemExit(f"--question-type-repeats must look like exists:3,relation:2. Received: {text!r}")
    return {name.strip(): int(count) for name, count in pairs}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=DEFAULTS["total_steps"])
    parser.add_argument("--fractions", type=float, nargs=3, default=DEFAULTS["fractions"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--loss-weighting", choices=("uncertainty", "fixed"), default=DEFAULTS["loss_weighting"])
    parser.add_argument("--alignment-contrastive-scale", type=float, default=DEFAULTS["alignment_contrastive_scale"],
                        help="factor on the SigLIP term in the alignment stage (1: none)")
    parser.add_argument("--finetuning-contrastive-scale", type=float, default=DEFAULTS["finetuning_contrastive_scale"],
                        help="factor on the SigLIP term in the fine-tuning stage (0: none)")
    parser.add_argument("--finetuning-learning-rate", type=float, default=DEFAULTS["finetuning_learning_rate"],
                        help="peak learning rate of the fine-tuning stage (default: 2e-3, as the others)")
    parser.add_argument("--sequence-length", type=int, default=DEFAULTS["sequence_length"],
                        help="tokens per training example (default: the shortest that holds every VQA example, >= 48)")
    parser.add_argument("--answer-format", choices=pipelines.ANSWER_FORMATS, default=DEFAULTS["answer_format"],
                        help="VQA responses: the answer alone; the scene's caption, the question's focus, ': ', "
                             "the answer (caption_first); or that with a yes/no check per caption slot for the "
                             "item a question names (caption_checks)")
    parser.add_argument("--questions-per-example", type=int, default=DEFAULTS["questions_per_example"],
                        help="questions of one scene per fine-tuning VQA example (multi-turn)")
    parser.add_argument("--question-type-repeats", default=None, metavar="TYPE:N,...",
                        help="how often each question type's questions come up, e.g. exists:3")
    parser.add_argument("--retrieval-steps", type=int, default=DEFAULTS["retrieval_steps"],
                        help="steps of the last stage, the contrastive heads alone on caption pairs (0: none)")
    parser.add_argument("--mixture", default=None, metavar="SOURCE:WEIGHT,...",
                        help="the fine-tuning stage's data, e.g. caption:0.3,vqa:0.6,text:0.1; "
                             "sources: text, caption, vqa, counterfactual_vqa, described_vqa (default: "
                             "training.pipeline.FASHION_MIXTURE)")
    parser.add_argument("--text-mixture", default=None, metavar="SOURCE:WEIGHT,...",
                        help="the text stage's data, e.g. text:0.2,described_vqa:0.8; sources: text, "
                             "described_vqa (default: Shakespeare alone)")
    parser.add_argument("--retrieval-learning-rate", type=float, default=DEFAULTS["retrieval_learning_rate"])
    parser.add_argument("--vocabulary-size", type=int, choices=sorted(PACKAGED_VOCABULARIES), default=None,
                        help="packaged vocabulary (default: 8192, the shipped preset's; 2048 trains "
                        "in about half the time, about 4 VQA points lower)")
    parser.add_argument("--output", default=None)
    parser.add_argument("--checkpoint-dir", default="fashion_checkpoints")
    parser.add_argument("--log-dir", default="benchmarks/fashion_training")
    args = parser.parse_args()
    result, preset = train_fashion_preset(
        output_dir=args.output, total_steps=args.steps, batch_size=args.batch_size,
        checkpoint_dir=args.checkpoint_dir, log_dir=args.log_dir, fractions=tuple(args.fractions),
        loss_weighting=args.loss_weighting, alignment_contrastive_scale=args.alignment_contrastive_scale,
        finetuning_learning_rate=args.finetuning_learning_rate,
        finetuning_contrastive_scale=args.finetuning_contrastive_scale,
        sequence_length=args.sequence_length, questions_per_example=args.questions_per_example,
        question_type_repeats=parse_repeats(args.question_type_repeats), answer_format=args.answer_format,
        retrieval_steps=args.retrieval_steps, retrieval_learning_rate=args.retrieval_learning_rate,
        mixture=parse_mixture(args.mixture), text_mixture=parse_mixture(args.text_mixture),
        vocabulary_size=args.vocabulary_size,
    )
    print(f"Saved preset to {preset}; log {result.log_path}; plot {result.plot_path}")
