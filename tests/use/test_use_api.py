"""limitr.use: the README example, parity with the embeddings pipeline, the search ranking,
and the geometry of grounding maps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from use_fixtures import CROP, IMAGE_SIZE, original_image, write_original

from limitr.eval.scoring import score_matrix, take
from limitr.eval.store import align, read_embeddings
from limitr.model.outputs import ImageEmbeddings, Scores, TextEmbeddings
from limitr.use import Explorer, load, load_gallery
from limitr.use.model import TrainedModel
from limitr.use.search import GlobalIndex, search_images, search_reports

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tiny_run):
    return load(tiny_run["model"])


@pytest.fixture(scope="module")
def stored(tiny_run):
    """The test split as ``limitr embed`` saved it, images and texts aligned by study."""
    folder = tiny_run["embeddings"] / "test"
    img_keys, images = read_embeddings(folder, "images")
    txt_keys, texts = read_embeddings(folder, "texts")
    keys, ir, tr = align(img_keys, txt_keys)
    return keys, take(images, ir), take(texts, tr)


def test_readme_example_runs(tiny_run, tmp_path: Path) -> None:
    """docs/api_example.py (the README's example) in a folder laid out as `dvc repro` leaves it."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("model", "tokens", "shards"):
        os.symlink(tiny_run[name], data / name)
    front, lat = tiny_run["files"][1]
    shutil.copy(front, tmp_path / "cxr.jpg")
    shutil.copy(lat, tmp_path / "cxr_lateral.jpg")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "api_example.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("combined:") and lines[1].startswith("map of")
    height, width = original_image(1, 70, 100).shape
    assert f"({height}, {width}) over an image of ({height}, {width})" in lines[1]
    assert len((ROOT / "docs" / "api_example.py").read_text().strip().splitlines()) <= 11


def test_user_images_embed_as_the_pipeline_does(tiny_run, trained, stored) -> None:
    """The original files through the API give the embeddings `limitr embed` saved from the
    preprocessed shards of the same studies (frontal and lateral), and the same scores."""
    keys, images, texts = stored
    fronts = [f for f, _ in tiny_run["files"]]
    lats = [lat for _, lat in tiny_run["files"]]
    study_keys = [50000000 + i for i in range(len(fronts))]
    rows = [int((keys == k).nonzero()) for k in study_keys]
    api = trained.encode_images(fronts, lats)
    ref = take(images, torch.tensor(rows))
    torch.testing.assert_close(api.embeddings.global_emb, ref.global_emb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(api.embeddings.local, ref.local, atol=1e-5, rtol=1e-4)
    assert torch.equal(api.embeddings.local_mask, ref.local_mask)
    assert bool(ref.local_mask[:, -1].any()) and not bool(ref.local_mask[:, -1].all())  # some with a lateral
    api_texts = trained.encode_text(tiny_run["texts"])
    ref_texts = take(texts, torch.tensor(rows))
    torch.testing.assert_close(api_texts.global_emb, ref_texts.global_emb, atol=1e-5, rtol=1e-4)
    ours = trained.score(api, api_texts)
    theirs = score_matrix(trained.model, ref, ref_texts)
    for name in ("total", "global_", "local"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), atol=1e-5, rtol=1e-4)
    assert ours.total.shape == (len(fronts), len(fronts))


def test_search_reranks_the_global_candidates_by_the_combined_score(trained, stored, tiny_run) -> None:
    keys, images, _ = stored
    texts = trained.encode_text(["left pleural effusion", "moderate cardiomegaly"])
    full = score_matrix(trained.model, images, texts)
    n, c, k = len(keys), 5, 3
    results = search_images(trained.model, images, keys, texts, ["a", "b"], k=k, candidates=c)
    unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    glob = unit(images.global_emb) @ unit(texts.global_emb).T
    for j, result in enumerate(results):
        candidates = torch.topk(glob[:, j], c).indices
        expected = candidates[torch.argsort(full.total[candidates, j], descending=True)][:k]
        assert [h.row for h in result.hits] == expected.tolist()
        assert [h.key for h in result.hits] == keys[expected].tolist()
        assert [h.total for h in result.hits] == pytest.approx(full.total[expected, j].tolist(), abs=1e-5)
        assert [h.global_ for h in result.hits] == pytest.approx(glob[expected, j].tolist(), abs=1e-5)
    exact = search_images(trained.model, images, keys, texts, ["a", "b"], k=n, exact=True)
    for j, result in enumerate(exact):
        assert [h.row for h in result.hits] == torch.argsort(full.total[:, j], descending=True).tolist()
    # all the gallery as candidates: the re-ranked list is the exact one
    wide = search_images(trained.model, images, keys, texts, ["a", "b"], k=n, candidates=n)
    assert [[h.row for h in r.hits] for r in wide] == [[h.row for h in r.hits] for r in exact]


def test_faiss_index_gives_the_brute_force_answer(stored) -> None:
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(500, 16, generator=g), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)
    brute, by_faiss = GlobalIndex(vectors, threshold=10_000), GlobalIndex(vectors, threshold=100)
    assert brute.kind == "torch" and by_faiss.kind == "faiss"
    s1, r1 = brute.search(queries, 20)
    s2, r2 = by_faiss.search(queries, 20)
    assert torch.equal(r1, r2)
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)


def test_image_search_ranks_reports(trained, stored, tiny_run) -> None:
    keys, images, texts = stored
    front, lat = tiny_run["files"][2]
    study = trained.encode_images([front], [lat]).embeddings
    result = search_reports(trained.model, study, texts, keys, k=4, candidates=6)
    full = score_matrix(trained.model, study, texts).total[0]
    unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    candidates = torch.topk((unit(texts.global_emb) @ unit(study.global_emb).T)[:, 0], 6).indices
    expected = candidates[torch.argsort(full[candidates], descending=True)][:4]
    assert [h.row for h in result.hits] == expected.tolist()


def test_explorer_writes_sheet_and_self_contained_page(trained, tiny_run, tmp_path: Path) -> None:
    gallery = load_gallery(tiny_run["embeddings"], "test", tiny_run["shards"], trained.fingerprint, trained.crop_size)
    explorer = Explorer(trained, gallery, candidates=8)
    [result] = explorer.find_images(["right upper lobe consolidation"], k=4)
    panels = explorer.hit_panels(result)
    assert len(panels) == 4
    for panel in panels:  # the map covers the shown image (padding removed), NaN outside the crop
        assert panel.values.shape == panel.image.shape
        assert np.isfinite(panel.values).any()
    png, page = explorer.write_text_results(result, tmp_path / "q")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 4 and "src=\"http" not in text
    assert str(result.hits[0].key) in text


# --------------------------------------------------------------------- grounding geometry


class BrightModel(torch.nn.Module):
    """Region features are the region's brightness: a phrase attends to the brightest regions."""

    def __init__(self, grid: int = 6) -> None:
        super().__init__()
        self.grid = grid
        self.config = SimpleNamespace(lateral=False, embed_dim=2)

    def encode_images(self, frontal, lateral, has_lateral) -> ImageEmbeddings:
        pooled = torch.nn.functional.adaptive_avg_pool2d(frontal[:, :1], self.grid).flatten(1)  # (B, R)
        local = torch.stack([pooled * 20.0, torch.ones_like(pooled)], -1)
        mask = torch.ones(local.shape[:2], dtype=torch.bool)
        return ImageEmbeddings(local.mean(1), local, mask, (self.grid, self.grid))

    def encode_text(self, input_ids, attention_mask, word_ids) -> TextEmbeddings:
        b, t = input_ids.shape
        local = torch.tensor([1.0, 0.0]).expand(b, t, 2).clone()
        return TextEmbeddings(local.mean(1), local, attention_mask.bool())

    def similarity(self, img, txt, chunk=None) -> Scores:
        g = img.global_emb @ txt.global_emb.T
        return Scores(total=g, global_=g, local=None, caption=None, image=None)

    def grounding_maps(self, img, txt) -> torch.Tensor:
        logits = torch.einsum("bnd,bmd->bnm", txt.local, img.local)
        return logits.softmax(-1)


@pytest.mark.parametrize("size", [(90, 140), (150, 100)])
def test_ground_map_peaks_on_the_feature_in_original_pixels(tmp_path: Path, size) -> None:
    """A bright square off-centre in a wide or tall image: the map, in the original's pixels,
    peaks inside it; the crop's cut-off border is NaN."""
    from use_fixtures import tokenizer_source

    height, width = size
    pixels = np.full((height, width), 40, np.uint8)
    y0, x0 = int(height * 0.55), int(width * 0.25)
    side = max(height, width) // 5
    pixels[y0 : y0 + side, x0 : x0 + side] = 250
    path = tmp_path / "square.png"
    from PIL import Image

    Image.fromarray(pixels, mode="L").save(path)
    model = TrainedModel(BrightModel(), {"train": {"crop_size": CROP, "upsample_to": None}}, tmp_path,
                         tokenizer_source(), IMAGE_SIZE, 16)
    heat = model.ground(path, "bright square")
    assert heat.values.shape == heat.image.shape == (height, width)
    assert np.array_equal(heat.image, pixels)
    y, x = np.unravel_index(np.nanargmax(heat.values), heat.values.shape)
    assert y0 <= y < y0 + side and x0 <= x < x0 + side
    # the centre crop cut off the long side's ends: NaN there, values in the middle
    assert np.isfinite(heat.values[height // 2, width // 2])
    long_axis_edge = heat.values[height // 2, 0] if width > height else heat.values[0, width // 2]
    assert np.isnan(long_axis_edge)
    # attention is reported as a multiple of uniform: its mean over the regions is 1
    grid_map = model.region_maps(model.encode_images([path]).embeddings, model.encode_text(["bright square"]))
    assert float(grid_map.mean()) == pytest.approx(1.0, abs=1e-5)



def test_share_script_reads_mentions_as_written() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from search_share import hypergeom_tail, mentions
    finally:
        sys.path.pop(0)
    query = "right upper lobe consolidation"
    assert mentions("heart normal. there is right upper lobe consolidation.", query)
    assert not mentions("no right upper lobe consolidation. heart normal.", query)
    assert not mentions("left upper lobe consolidation. right lower lobe clear.", query)
    assert mentions("patchy consolidation at the left base", query, loose=True)
    assert not mentions("no focal consolidation", query, loose=True)
    assert hypergeom_tail(10, 3, 3, 0) == pytest.approx(1.0)
    assert hypergeom_tail(10, 3, 3, 3) == pytest.approx(1 / 120)


def test_readme_shows_the_example_that_runs() -> None:
    """The README's Python example is docs/api_example.py, line for line (that file runs above)."""
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    example = (ROOT / "docs" / "api_example.py").read_text()
    assert example in blocks, "README's ```python block differs from docs/api_example.py"
