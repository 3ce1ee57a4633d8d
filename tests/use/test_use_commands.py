"""`limitr search` and `limitr ground`: outputs on a tiny run, and every bad input ends in
exit code 1 and one line on stderr."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stages.app import app

runner = CliRunner()


def common(run: dict) -> list[str]:
    return ["--params", str(run["root"] / "none.yaml"), "--model", str(run["model"]),
            "--tokenizer", str(run["tokens"] / "tokenizer"), "--device", "cpu"]


def gallery(run: dict) -> list[str]:
    return ["--embeddings", str(run["embeddings"]), "--shards", str(run["shards"])]


def fails_with(args: list[str], words: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_search_text_prints_and_draws(tiny_run, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", "right upper lobe consolidation", "moderate cardiomegaly", "--k", "3",
                                 "--out", str(out), *common(tiny_run), *gallery(tiny_run)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("5000000") + result.stdout.count("5000001") >= 6
    for name in ("right_upper_lobe_consolidation", "moderate_cardiomegaly"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.html").is_file()
    exact = runner.invoke(app, ["search", "moderate cardiomegaly", "--k", "3", "--exact", "--out", str(out),
                                *common(tiny_run), *gallery(tiny_run)])
    assert exact.exit_code == 0 and "combined" in exact.stdout


def test_ground_an_ms_cxr_phrase_with_its_box(tiny_run, tmp_path: Path) -> None:
    out = tmp_path / "ms.png"
    result = runner.invoke(app, ["ground", "--ms-cxr", "1", "--out", str(out), *common(tiny_run),
                                 "--shards", str(tiny_run["shards"])])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "Bright disc" in result.stdout
    fails_with(["ground", "--ms-cxr", "99", "--out", str(out), *common(tiny_run), "--shards", str(tiny_run["shards"])],
               "no phrase_id 99")


def test_search_another_table_as_gallery(tiny_run, tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", "bright disc", "--table", "grounding", "--k", "2", "--out", str(tmp_path),
                                 *common(tiny_run), *gallery(tiny_run)])
    assert result.exit_code == 0, result.output
    assert "Bright disc" in result.stdout and (tmp_path / "bright_disc.html").is_file()
    from limitr.use import Explorer, load, load_gallery

    model = load(tiny_run["model"])
    table = load_gallery(tiny_run["embeddings"], "grounding", tiny_run["shards"], model.fingerprint, model.crop_size)
    [found] = Explorer(model, table).find_images(["bright disc"], k=2)
    for panel in Explorer(model, table).hit_panels(found):  # each hit's ground-truth box, drawn
        assert [label for label, _ in panel.boxes] == ["MS-CXR"]
        x, y, w, h = panel.boxes[0][1]
        assert 0 <= x and x + w <= panel.image.shape[1] + 1 and 0 <= y and y + h <= panel.image.shape[0] + 1


def test_search_image_ranks_reports(tiny_run, tmp_path: Path) -> None:
    front, lat = tiny_run["files"][1]
    result = runner.invoke(app, ["search", "--image", str(front), "--lateral", str(lat), "--k", "4",
                                 "--out", str(tmp_path), *common(tiny_run), *gallery(tiny_run)])
    assert result.exit_code == 0, result.output
    assert "case" in result.stdout  # report excerpts
    assert len(list(tmp_path.glob("image_*.html"))) == 1


def test_ground_writes_a_map(tiny_run, tmp_path: Path) -> None:
    front, _ = tiny_run["files"][0]
    out = tmp_path / "map.png"
    result = runner.invoke(app, ["ground", "--image", str(front), "--phrase", "left pleural effusion", "--out", str(out),
                                 "--box", "10,10,40,50", *common(tiny_run), "--shards", str(tiny_run["shards"])])
    assert result.exit_code == 0, result.output
    from PIL import Image

    with Image.open(out) as img:
        assert img.size[0] > 300


@pytest.fixture(scope="module")
def bad_files(tiny_run, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad")
    text = root / "notes.jpg"
    text.write_text("this is not an image\n")
    truncated = root / "truncated.jpg"
    data = Path(tiny_run["files"][1][0]).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    no_config = root / "no_config"
    shutil.copytree(tiny_run["model"] / "best", no_config / "best")
    (no_config / "best" / "config.json").unlink()
    other_version = root / "other_version"
    shutil.copytree(tiny_run["model"], other_version)
    config = json.loads((other_version / "best" / "config.json").read_text())
    config["embed_dim"] = 32  # a config the weights do not match
    (other_version / "best" / "config.json").write_text(json.dumps(config))
    unknown = root / "unknown_keys"
    shutil.copytree(tiny_run["model"], unknown)
    config = json.loads((unknown / "best" / "config.json").read_text())
    config["vision_tower"] = "vit"
    (unknown / "best" / "config.json").write_text(json.dumps(config))
    other_gallery = root / "embeddings"
    shutil.copytree(tiny_run["embeddings"], other_gallery)
    report = json.loads((other_gallery / "report.json").read_text())
    report["model_fingerprint"] = "0123456789abcdef"
    (other_gallery / "report.json").write_text(json.dumps(report))
    return {"text": text, "truncated": truncated, "no_config": no_config, "other_version": other_version,
            "unknown": unknown, "other_gallery": other_gallery}


def test_bad_inputs_are_one_line(tiny_run, bad_files, tmp_path: Path) -> None:
    run, bad = tiny_run, bad_files
    out = ["--out", str(tmp_path / "o")]
    fails_with(["search", "--image", str(bad["text"]), *out, *common(run), *gallery(run)], "not a readable image")
    fails_with(["search", "--image", str(bad["truncated"]), *out, *common(run), *gallery(run)], "truncated")
    fails_with(["search", "--image", str(tmp_path / "absent.png"), *out, *common(run), *gallery(run)], "does not exist")
    fails_with(["search", "  ", *out, *common(run), *gallery(run)], "empty query")
    fails_with(["search", *out, *common(run), *gallery(run)], "give a finding")
    fails_with(["ground", "--image", str(bad["text"]), "--phrase", "effusion", "--out", str(tmp_path / "m.png"),
                *common(run)], "not a readable image")
    fails_with(["ground", "--image", str(run["files"][0][0]), "--phrase", " ", *common(run)], "empty phrase")
    fails_with(["ground", "--image", str(run["files"][0][0]), "--phrase", "x", "--box", "5,5,1", *common(run)], "--box")
    gal = ["--embeddings", str(run["embeddings"]), "--shards", str(run["shards"])]
    base = ["--params", str(run["root"] / "none.yaml"), "--tokenizer", str(run["tokens"] / "tokenizer")]
    fails_with(["search", "effusion", *out, *base, "--model", str(bad["no_config"]), *gal], "config")
    fails_with(["search", "effusion", *out, *base, "--model", str(bad["other_version"]), *gal], "does not match its config")
    fails_with(["search", "effusion", *out, *base, "--model", str(bad["unknown"]), *gal], "vision_tower")
    fails_with(["search", "effusion", *out, *common(run), "--embeddings", str(bad["other_gallery"]),
                "--shards", str(run["shards"])], "another model")
    fails_with(["search", "effusion", *out, *common(run), "--embeddings", str(tmp_path / "none"),
                "--shards", str(run["shards"])], "does not exist")


def test_explore_refuses_a_missing_model_in_one_line(tiny_run, tmp_path: Path) -> None:
    fails_with(["explore", "--params", str(tiny_run["root"] / "none.yaml"), "--model", str(tmp_path / "absent"),
                *gallery(tiny_run)], "does not exist")
    fails_with(["explore", "--params", str(tiny_run["root"] / "none.yaml"), "--map", "edges"], "--map")


def test_explore_keeps_uploads_in_a_private_folder_it_removes(tiny_run, monkeypatch) -> None:
    """The page's uploads (patients' images) go to a fresh 0700 folder, not Gradio's shared
    /tmp/gradio, and the folder goes when the page stops, even on Ctrl-C."""
    pytest.importorskip("gradio")
    import limitr.use.page

    seen = {}

    class Page:
        local_url = "http://127.0.0.1:0/"

        def block_thread(self):
            folder = Path(os.environ["GRADIO_TEMP_DIR"])
            seen["folder"], seen["mode"] = folder, folder.stat().st_mode & 0o777
            (folder / "upload.png").write_bytes(b"an upload")
            raise KeyboardInterrupt

        def close(self):
            seen["closed"] = True

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    monkeypatch.setattr(limitr.use.page, "launch", lambda *a, **kw: Page())
    result = runner.invoke(app, ["explore", *common(tiny_run), *gallery(tiny_run)])
    assert result.exit_code == 130 and result.stderr.strip() == "interrupted", result.output
    assert seen["mode"] == 0o700 and seen["closed"]
    assert seen["folder"].name.startswith("limitr-explore-") and not seen["folder"].exists()
    assert "GRADIO_TEMP_DIR" not in os.environ
