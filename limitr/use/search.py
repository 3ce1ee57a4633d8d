"""Search a gallery with the method's ranking: global candidates, then the combined score.

Text -> images: the query's global embedding against every gallery image's (cosine), the
``candidates`` best of those re-ranked by the model's combined score (``similarity``'s
``total``: local and global), the ``k`` best returned. ``exact=True`` scores the whole
gallery with the combined score instead. Image -> reports works the same way over the
gallery's report embeddings.

The global stage is a brute-force matrix product up to ``index_threshold`` gallery items and
a faiss inner-product index above it (built once per gallery and kept); without faiss
installed the brute-force product serves every size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from limitr.errors import LimitrError
from limitr.eval.scoring import score_matrix, take
from limitr.model.outputs import ImageEmbeddings, TextEmbeddings

#: Gallery size above which the global stage uses a faiss index.
INDEX_THRESHOLD = 100_000
#: Global candidates re-ranked with the combined score.
CANDIDATES = 100


@dataclass
class Hit:
    """One ranked gallery item: its row in the gallery, its key and its scores."""

    rank: int
    row: int
    key: int
    total: float
    global_: float
    local: Optional[float]


@dataclass
class SearchResult:
    query: str
    hits: list[Hit] = field(default_factory=list)
    exact: bool = False
    candidates: int = 0
    query_text: Optional[TextEmbeddings] = None  # the query's embeddings (text searches), for its maps


class GlobalIndex:
    """Top-k inner products against fixed unit vectors: torch below the threshold, faiss above."""

    def __init__(self, vectors: torch.Tensor, threshold: int = INDEX_THRESHOLD) -> None:
        self.vectors = vectors.float().contiguous()
        self.faiss_index = None
        if vectors.shape[0] > threshold:
            try:
                import faiss
            except ImportError:  # brute force is exact, only slower
                faiss = None
            if faiss is not None:
                index = faiss.IndexFlatIP(int(vectors.shape[1]))
                index.add(self.vectors.numpy())
                self.faiss_index = index

    @property
    def kind(self) -> str:
        return "faiss" if self.faiss_index is not None else "torch"

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, D) unit queries -> (scores, rows), each (q, min(k, n)), best first."""
        k = min(int(k), int(self.vectors.shape[0]))
        queries = queries.float().contiguous()
        if self.faiss_index is not None:
            scores, rows = self.faiss_index.search(queries.numpy(), k)
            return torch.from_numpy(scores), torch.from_numpy(rows).long()
        return torch.topk(queries @ self.vectors.T, k, dim=1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def _hits(rows: torch.Tensor, keys: torch.Tensor, total: torch.Tensor, glob: torch.Tensor,
          local: Optional[torch.Tensor], k: int) -> list[Hit]:
    order = torch.argsort(total, descending=True, stable=True)[:k]
    return [
        Hit(rank=i + 1, row=int(rows[j]), key=int(keys[rows[j]]), total=float(total[j]), global_=float(glob[j]),
            local=None if local is None else float(local[j]))
        for i, j in enumerate(order.tolist())
    ]


@torch.no_grad()
def search_images(model, images: ImageEmbeddings, keys: torch.Tensor, texts: TextEmbeddings, queries: list[str],
                  k: int = 10, candidates: int = CANDIDATES, exact: bool = False,
                  index: Optional[GlobalIndex] = None, device: str = "cpu", block_size: int = 64) -> list[SearchResult]:
    """Gallery images for each query text. model: anything with LIMITR's ``similarity``."""
    _check(k, candidates)
    n = int(keys.shape[0])
    if exact:
        scores = score_matrix(model, images, texts, block_size=block_size, device=device)
        rows = torch.arange(n)
        return [SearchResult(q, _hits(rows, keys, scores.total[:, j], scores.global_[:, j],
                                      None if scores.local is None else scores.local[:, j], k), True, n)
                for j, q in enumerate(queries)]
    index = index or GlobalIndex(_unit(images.global_emb))
    _, cand = index.search(_unit(texts.global_emb), max(candidates, k))
    out = []
    for j, q in enumerate(queries):
        rows = cand[j]
        scores = score_matrix(model, take(images, rows), take(texts, slice(j, j + 1)), block_size=block_size,
                              device=device)
        out.append(SearchResult(q, _hits(rows, keys, scores.total[:, 0], scores.global_[:, 0],
                                         None if scores.local is None else scores.local[:, 0], k), False, len(rows)))
    return out


@torch.no_grad()
def search_reports(model, image: ImageEmbeddings, texts: TextEmbeddings, keys: torch.Tensor, query: str = "image",
                   k: int = 10, candidates: int = CANDIDATES, exact: bool = False,
                   index: Optional[GlobalIndex] = None, device: str = "cpu", block_size: int = 64) -> SearchResult:
    """Gallery reports for one study (``image`` holds one item)."""
    _check(k, candidates)
    n = int(keys.shape[0])
    if exact:
        rows = torch.arange(n)
    else:
        index = index or GlobalIndex(_unit(texts.global_emb))
        rows = index.search(_unit(image.global_emb[:1]), max(candidates, k))[1][0]
    scores = score_matrix(model, take(image, slice(0, 1)), take(texts, rows), block_size=block_size, device=device)
    return SearchResult(query, _hits(rows, keys, scores.total[0], scores.global_[0],
                                     None if scores.local is None else scores.local[0], k), exact, len(rows))


def _check(k: int, candidates: int) -> None:
    if k < 1:
        raise LimitrError(f"the number of hits must be positive, got {k}")
    if candidates < 1:
        raise LimitrError(f"the number of candidates must be positive, got {candidates}")
