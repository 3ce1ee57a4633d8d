"""The class and zero-shot prompts: complete, in report language, tokenised like reports."""

from __future__ import annotations

from eval_fixtures import tokenizer_dir

from limitr.data.schema import CHEXPERT_LABELS, CLASS_RETRIEVAL_CLASSES
from limitr.eval.prompts import CLASS_PROMPTS, ZERO_SHOT_PROMPTS, all_prompts, tokenize_prompts


def test_every_class_has_prompts_in_lower_case() -> None:
    assert set(CLASS_PROMPTS) == set(CLASS_RETRIEVAL_CLASSES)
    assert set(ZERO_SHOT_PROMPTS) <= set(CHEXPERT_LABELS)
    for positive, negative in ZERO_SHOT_PROMPTS.values():
        assert positive and negative and not set(positive) & set(negative)
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts))
    assert all(p == p.lower() and p.strip() == p for p in prompts)


def test_prompt_word_ids_number_the_words() -> None:
    tok = tokenize_prompts(tokenizer_dir(), ["there is a left pleural effusion", "cardiomegaly"], 16)
    assert tok["input_ids"].shape == (2, 16)
    words = tok["word_ids"][0]
    assert words[0] == -1 and int(words.max()) == 5  # six words, [CLS] first
    assert int(tok["word_ids"][1].max()) == 0  # one word, however many pieces
    assert (tok["word_ids"][tok["attention_mask"] == 0] == -1).all()
