"""The text-only probe's examples: the caption moves into the prompt, the rest is kept or rewritten."""

import pytest

from benchmarks.fashion_training.text_probe import question_type, text_only_example

PROMPT = "<start_of_image> Question: What is left of the bag? Answer:"
RESPONSE = " a sneaker and a bag above a dress and an ankle boot. left of the bag? no yes no no: a sneaker"


def test_the_caption_moves_into_the_prompt_and_the_checks_stay():
    prompt, response = text_only_example(PROMPT, RESPONSE, "checks")
    assert prompt == (
        "Question: What is left of the bag? Caption: a sneaker and a bag above a dress and an ankle boot. Answer:"
    )
    assert response == " left of the bag? no yes no no: a sneaker"
    assert text_only_example(PROMPT, RESPONSE, "repeats") == (prompt, response)


def test_slotwords_names_each_slot_before_its_check():
    _, response = text_only_example(PROMPT, RESPONSE, "slotwords")
    assert response == " left of the bag? sneaker no, bag yes, dress no, ankle boot no: a sneaker"
    # Questions without checks (positions, counts) keep their response.
    position = " a sneaker and a bag above a dress and an ankle boot. top left: a sneaker"
    assert text_only_example("<start_of_image> Question: What is in the top left? Answer:", position,
                             "slotwords")[1] == " top left: a sneaker"


def test_question_types_and_a_bad_variant():
    prompts = [text_only_example(f"<start_of_image> Question: {q} Answer:", RESPONSE)[0] for q in (
        "What is in the top left?", "How many bags are there?", "Is there a bag?", "What is left of the bag?")]
    assert [question_type(p) for p in prompts] == ["position", "count", "exists", "relation"]
    with pytest.raises(ValueError, match="variant"):
        text_only_example(PROMPT, RESPONSE, "slots")
