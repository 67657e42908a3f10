"""Reproduces `vishwam_keras/presets/vishwam_tiny_fashion` from scratch (2-core CPU).

    python scripts/train_fashion_preset.py [--steps 5000] [--checkpoint-dir DIR]

Needs Fashion-MNIST (`apt-get install dataset-fashion-mnist`); rerun with the same
`--checkpoint-dir` to resume after an interruption. Runs under TensorFlow unless
`KERAS_BACKEND` says otherwise: on 2 CPU cores its training steps take about 0.25-0.3 s
(about 31 minutes in all, the last stage's 0.12 s steps included) against about 0.5 s under JAX.
`--retrieval-steps 1000` saves about two minutes (retrieval trains less).
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from vishwam_keras.training.pipeline import train_fashion_preset  # noqa: E402 (after the backend)


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
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.05, 0.2, 0.75))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--loss-weighting", choices=("uncertainty", "fixed"), default="uncertainty")
    parser.add_argument("--alignment-contrastive-scale", type=float, default=10.0,
                        help="factor on the SigLIP term in the alignment stage (1: none)")
    parser.add_argument("--finetuning-contrastive-scale", type=float, default=0.0,
                        help="factor on the SigLIP term in the fine-tuning stage (0: none)")
    parser.add_argument("--finetuning-learning-rate", type=float, default=None,
                        help="peak learning rate of the fine-tuning stage (default: 2e-3, as the others)")
    parser.add_argument("--sequence-length", type=int, default=None,
                        help="tokens per training example (default: the shortest that holds every VQA example, >= 48)")
    parser.add_argument("--answer-format", choices=("direct", "caption_first"), default="caption_first",
                        help="VQA responses: the answer alone, or the scene's caption, ', so ', the answer")
    parser.add_argument("--questions-per-example", type=int, default=1,
                        help="questions of one scene per fine-tuning VQA example (multi-turn)")
    parser.add_argument("--question-type-repeats", default=None, metavar="TYPE:N,...",
                        help="how often each question type's questions come up, e.g. exists:3")
    parser.add_argument("--retrieval-steps", type=int, default=2000,
                        help="steps of the last stage, the contrastive heads alone on caption pairs (0: none)")
    parser.add_argument("--retrieval-learning-rate", type=float, default=1e-3)
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
    )
    print(f"Saved preset to {preset}; log {result.log_path}; plot {result.plot_path}")
