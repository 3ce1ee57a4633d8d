"""The LIMITR model: encoders, lateral fusion, positional encoding, scores and losses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from limitr.errors import LimitrError
from limitr.model.alignment import LocalAlignment, l2norm
from limitr.model.config import ModelConfig
from limitr.model.image_encoder import ImageEncoder
from limitr.model.losses import global_loss, local_external_loss, local_internal_loss
from limitr.model.outputs import ImageEmbeddings, Losses, Scores, TextEmbeddings
from limitr.model.precision import full_precision
from limitr.model.position import sincos_2d
from limitr.model.text_encoder import TextEncoder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: The text model's own (transformers) config, so that a saved model rebuilds without it.
TEXT_CONFIG_FILE = "text_config.json"


class LIMITR(nn.Module):
    """Chest X-ray / report model with local (word-region) and global alignment.

    ``load_weights=False`` builds the same architecture without reading pretrained image
    or text weights (used when a whole saved state follows); ``text_model_config`` builds
    the text encoder from a transformers config dict instead of ``config.text_encoder``.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        text_model_config: Optional[dict[str, Any]] = None,
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d = config.embed_dim
        image_weights = config.image_weights if load_weights else None
        view = (config.image_backbone, d, image_weights, config.local_layer)
        self.frontal_encoder = ImageEncoder(*view)
        self.lateral_encoder = ImageEncoder(*view) if config.lateral else None
        if text_model_config is None and not load_weights:
            text_model_config = _text_config_from_source(config.text_encoder)
        self.text_encoder = TextEncoder(
            config.text_encoder, d, config.text_freeze_layers, model_config=text_model_config
        )
        self.alignment = LocalAlignment(d, config.temp1, config.saf_dropout, config.attention_scale)

    # ----------------------------------------------------------------------- encoders
    def _encode_view(self, encoder: ImageEncoder, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        global_emb, fmap = encoder(images)
        h, w = fmap.shape[-2:]
        local = fmap.flatten(2).transpose(1, 2)  # (B, R, D), row-major grid
        if self.config.positional_encoding:
            encoding = sincos_2d(h, w, local.shape[-1], device=local.device, dtype=local.dtype)
            local = local + self.config.positional_encoding_scale * encoding
        return global_emb, local, (int(h), int(w))

    def encode_images(
        self,
        frontal: torch.Tensor,
        lateral: Optional[torch.Tensor] = None,
        has_lateral: Optional[torch.Tensor] = None,
    ) -> ImageEmbeddings:
        """Embed studies.

        frontal, lateral: (B, 3, H, W) normalised images (see ``normalize_images``); the
        lateral rows of studies without one may hold anything (they are not encoded).
        has_lateral: (B,) bool; None with a lateral tensor means every study has one.
        The lateral encoder is skipped when config.lateral is False or lateral is None;
        then M = R, else M = 2R (frontal regions, then lateral regions).
        """
        g_front, l_front, grid = self._encode_view(self.frontal_encoder, frontal)
        b, r, d = l_front.shape
        if self.lateral_encoder is None or lateral is None:
            mask = torch.ones(b, r, dtype=torch.bool, device=l_front.device)
            return ImageEmbeddings(global_emb=g_front, local=l_front, local_mask=mask, grid=grid)
        if lateral.shape[0] != b:
            raise LimitrError(f"{lateral.shape[0]} lateral images for {b} frontal images")
        if has_lateral is None:
            has_lateral = torch.ones(b, dtype=torch.bool, device=frontal.device)
        has_lateral = has_lateral.to(device=frontal.device, dtype=torch.bool)
        index = has_lateral.nonzero().squeeze(1)
        # Only studies with a lateral go through the lateral encoder: no zero images in
        # its batch-norm statistics, no wasted work.
        g_lat = g_front.new_zeros(b, d)
        l_lat = l_front.new_zeros(b, r, d)
        if index.numel() > 0:
            g_sel, l_sel, lat_grid = self._encode_view(self.lateral_encoder, lateral.index_select(0, index))
            if lat_grid != grid:
                raise LimitrError(
                    f"lateral region grid {lat_grid} differs from the frontal grid {grid}; "
                    "give both views the same size"
                )
            g_lat = g_lat.index_copy(0, index, g_sel)
            l_lat = l_lat.index_copy(0, index, l_sel)
        present = has_lateral.to(g_front.dtype).unsqueeze(1)
        global_emb = (g_front + g_lat) / (1.0 + present)  # frontal alone where no lateral
        local = torch.cat([l_front, l_lat], dim=1)
        mask = torch.cat([torch.ones_like(has_lateral).unsqueeze(1).expand(b, r), has_lateral.unsqueeze(1).expand(b, r)], dim=1)
        return ImageEmbeddings(global_emb=global_emb, local=local, local_mask=mask, grid=grid)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_ids: torch.Tensor
    ) -> TextEmbeddings:
        """input_ids, attention_mask, word_ids: (B, T) from the token shards -> TextEmbeddings."""
        return self.text_encoder(input_ids, attention_mask, word_ids)

    # ----------------------------------------------------------------------- scores
    def similarity(self, img: ImageEmbeddings, txt: TextEmbeddings, chunk: Optional[int] = None) -> Scores:
        """All (study, report) scores, shape (n_images, n_texts): the one scoring function.

        global_ = cosine of the global embeddings; local = mean of the enabled
        directional scores (computed only when loss_weights.local_external > 0);
        total = mean(s * w_le * local, w_g * global_) over the terms whose weight is
        positive (:meth:`combine`; method.md), s = config.score_local_weight, so a disabled
        term neither costs time nor halves the other; with both weights zero, total is the
        unweighted global cosine.
        chunk: reports per chunk of the local scores (default config.score_chunk).
        """
        cfg = self.config
        # Under autocast the local scores run their large products in its dtype and return
        # float32; the cosines, the mean and the losses stay in float32 (model/precision.py).
        img_unit = l2norm(img.global_emb)
        with full_precision(img_unit):
            cosine = img_unit @ l2norm(txt.global_emb).t()
        caption = image = local = None
        if cfg.local_enabled:
            caption, image = self.alignment(
                txt.local,
                txt.local_mask,
                img.local,
                img.local_mask,
                caption=cfg.caption_attention,
                image=cfg.image_attention,
                chunk=cfg.score_chunk if chunk is None else chunk,
            )
            present = [s for s in (caption, image) if s is not None]
            local = present[0] if len(present) == 1 else (present[0] + present[1]) / 2
        with full_precision(cosine):
            total = self.combine(local, cosine)
        return Scores(total=total, global_=cosine, local=local, caption=caption, image=image)

    def combine(self, local: Optional[torch.Tensor], global_: torch.Tensor,
                local_weight: Optional[float] = None) -> torch.Tensor:
        """The combined score of :meth:`similarity` from its local and global terms (any
        equal shapes): mean(s * w_le * local, w_g * global_) over the terms whose weight is
        positive, s = ``local_weight`` or ``config.score_local_weight`` (1 = the paper's plain
        mean; 0 = the global term alone); with no positive weight, the unweighted global."""
        w = self.config.loss_weights
        s = self.config.local_score_factor if local_weight is None else float(local_weight)
        terms = []
        if local is not None and s > 0:
            terms.append((s * w.local_external) * local)
        if w.global_ > 0:
            terms.append(w.global_ * global_)
        return global_ if not terms else (terms[0] if len(terms) == 1 else (terms[0] + terms[1]) / 2)

    def loss(self, img: ImageEmbeddings, txt: TextEmbeddings) -> Losses:
        """Losses of a matched batch (study b with report b); uses :meth:`similarity`."""
        cfg = self.config
        if img.global_emb.shape[0] != txt.global_emb.shape[0]:
            raise LimitrError(
                f"a matched batch needs as many studies as reports, got {img.global_emb.shape[0]} "
                f"and {txt.global_emb.shape[0]}"
            )
        w = cfg.loss_weights
        scores = self.similarity(img, txt)
        zero = scores.global_.new_zeros(())
        matched = None
        if w.local_internal > 0:  # its context products may run under autocast
            matched = self.alignment.matched(
                txt.local, txt.local_mask, img.local, img.local_mask,
                with_weights=cfg.internal_weighting == "saf",
            )
        with full_precision(zero):  # cross-entropies and their means in float32 at least
            local_ext = local_external_loss(scores.caption, scores.image, cfg.temp3) if cfg.local_enabled else zero
            glob = global_loss(scores.global_, cfg.temp3)
            local_int = zero
            if matched is not None:
                local_int = local_internal_loss(
                    matched, txt.local, txt.local_mask, img.local, img.local_mask, cfg.internal_weighting
                )
            total = w.local_external * local_ext + w.local_internal * local_int + w.global_ * glob
        return Losses(total=total, local_external=local_ext, local_internal=local_int, global_=glob)

    def grounding_maps(self, img: ImageEmbeddings, txt: TextEmbeddings) -> torch.Tensor:
        """Word-to-region attention of report b over study b: (B, N, M), rows sum to 1.

        Row 0 is [CLS]; region m < R is frontal cell (m // w, m % w) of ``img.grid``.
        """
        matched = self.alignment.matched(txt.local, txt.local_mask, img.local, img.local_mask)
        return matched.word_attention

    # ----------------------------------------------------------------------- files
    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json``, ``text_config.json`` and ``model.safetensors`` into ``path``."""
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        (path / TEXT_CONFIG_FILE).write_text(json.dumps(self.text_encoder.model_config(), indent=2) + "\n")
        save_model(self, str(path / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "LIMITR":
        """Load a folder written by :meth:`save_pretrained` (safetensors only)."""
        from safetensors.torch import load_model

        path = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise LimitrError(f"{path} is not a saved LIMITR model: {name} is missing")
        try:
            config = ModelConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
        except json.JSONDecodeError as exc:
            raise LimitrError(f"{path / CONFIG_FILE} is not valid JSON: {exc}") from exc
        text_cfg_path = path / TEXT_CONFIG_FILE
        text_cfg = json.loads(text_cfg_path.read_text()) if text_cfg_path.is_file() else None
        model = cls(config, text_model_config=text_cfg, load_weights=False)
        try:
            missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False, device=str(device))
        except RuntimeError as exc:
            if "Error(s) in loading state_dict" not in str(exc):
                raise LimitrError(
                    f"{path / WEIGHTS_FILE} cannot be read ({str(exc).splitlines()[0][:120]}): it is damaged or "
                    "truncated; rerun the train stage that wrote it"
                ) from None
            raise LimitrError(  # weights of other shapes: another config or version wrote them
                f"{path / WEIGHTS_FILE} does not match its config (tensor shapes differ): "
                "a model from another version or config; retrain it"
            ) from None
        except Exception as exc:  # noqa: BLE001 - SafetensorError, or a header that does not parse
            raise LimitrError(
                f"{path / WEIGHTS_FILE} cannot be read ({str(exc).splitlines()[0][:120]}): it is damaged or "
                "truncated; rerun the train stage that wrote it"
            ) from None
        if missing or unexpected:
            raise LimitrError(
                f"{path / WEIGHTS_FILE} does not match its config: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        return model.to(device)


def _text_config_from_source(source: Optional[str]) -> dict[str, Any]:
    """The transformers config of ``source`` (default MiniLM) without loading its weights."""
    from transformers import AutoConfig

    from limitr.model.image_encoder import downloads_allowed
    from limitr.model.text_encoder import default_text_encoder_path

    name = str(source) if source else str(default_text_encoder_path())
    try:
        return AutoConfig.from_pretrained(name, local_files_only=not downloads_allowed()).to_dict()
    except (OSError, ValueError) as exc:
        raise LimitrError(f"cannot read the text encoder config of {name!r}: {exc}") from exc
