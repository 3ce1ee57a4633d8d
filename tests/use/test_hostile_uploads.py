"""Hostile uploads (issue 24): a 200-megapixel image, a zero-byte file, a PDF named .png, a
16-bit PNG and a CMYK JPEG given to `limitr search --image`, `limitr ground` and the explore
page. The bad ones end in one line (a message on the page) without decoding their pixels,
the page answers the next request, and 16-bit and CMYK files are read as the grey image
they hold."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hostile import grey_pattern, make_all
from stages.app import app
from stages.explore import private_uploads
from test_use_commands import common, fails_with, gallery

runner = CliRunner()

#: What the one line says for each bad file.
REFUSED = {
    "huge": "is too large to read (20000 x 10000 pixels",
    "empty": "is empty (zero bytes)",
    "pdf": "is not a readable image (JPEG or PNG)",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return make_all(tmp_path_factory.mktemp("hostile"))


def _peak_rss_reset() -> bool:
    """Reset this process's peak resident size (Linux: VmHWM), so that the next reading
    covers what follows only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_search_and_ground_refuse_in_one_line(name: str, files, tiny_run, tmp_path: Path) -> None:
    path = files[name]
    fails_with(["search", "--image", str(path), "--out", str(tmp_path), *common(tiny_run), *gallery(tiny_run)],
               f"{path} {REFUSED[name]}")
    fails_with(["ground", "--image", str(path), "--phrase", "left pleural effusion", "--out", str(tmp_path / "m.png"),
                *common(tiny_run)], f"{path} {REFUSED[name]}")
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("name", ["png16", "cmyk"])
def test_sixteen_bit_and_cmyk_are_read_as_their_grey_image(name: str, files, tiny_run, tmp_path: Path) -> None:
    from limitr.use.model import original_grey

    grey = original_grey(files[name])
    assert grey.dtype == np.uint8 and grey.shape == grey_pattern().shape
    assert np.abs(grey.astype(int) - grey_pattern().astype(int)).max() <= 2  # the same picture, not clipped white
    result = runner.invoke(app, ["search", "--image", str(files[name]), "--k", "2", "--out", str(tmp_path),
                                 *common(tiny_run), *gallery(tiny_run)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "map.png"
    result = runner.invoke(app, ["ground", "--image", str(files[name]), "--phrase", "left pleural effusion",
                                 "--out", str(out), *common(tiny_run)])
    assert result.exit_code == 0, result.output
    assert out.is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_page_shows_a_message_and_answers_the_next_upload(files, tiny_run, monkeypatch) -> None:
    pytest.importorskip("gradio")
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)  # as a user's shell has it
    from limitr.use import Explorer, load, load_gallery

    model = load(tiny_run["model"])
    table = load_gallery(tiny_run["embeddings"], "test", tiny_run["shards"], model.fingerprint, model.crop_size)
    with private_uploads() as uploads:
        assert uploads.stat().st_mode & 0o777 == 0o700
        _serve_and_upload(Explorer(model, table), files, tiny_run, uploads)
        kept = {p.name for p in uploads.rglob("*") if p.is_file()}
        # Gradio kept the uploads in the private folder
        assert {tiny_run["files"][1][0].name, files["cmyk"].name} <= kept, sorted(kept)
    assert not uploads.exists() and "GRADIO_TEMP_DIR" not in os.environ  # and it went with the page


def _serve_and_upload(explorer, files, tiny_run, uploads: Path) -> None:
    from gradio_client import Client, handle_file

    from limitr.use.page import launch

    page = launch(explorer, port=_free_port(), k=3, block=False)
    try:
        # download_files=False: the client leaves its copies of the answers on the server
        client = Client(page.local_url, verbose=False, download_files=False)
        good = tiny_run["files"][1][0]

        def read(path: Path):
            return client.predict(handle_file(str(path)), None, "left pleural effusion", 3, api_name="/read_image")

        read(good)  # everything loaded once before the peak is measured
        for name in ("huge", "empty", "pdf", "png16", "cmyk"):
            measured = _peak_rss_reset()
            before = _peak_rss_mb()
            reports, heat, message = read(files[name])
            grown = _peak_rss_mb() - before
            if name in REFUSED:
                assert f"{files[name].name} {REFUSED[name]}" in message and "limitr-error" in message, message
                assert str(uploads) not in message and "/gradio" not in message  # the file as the user named it
                assert not reports and heat is None
            else:
                assert "reports ranked" in message and reports.count("<tr>") == 1 + 3, message
            if measured and name == "huge":
                assert grown < 100, f"peak resident size grew by {grown:.0f} MB: the 200-megapixel image was decoded"
            # the server answers the next request as before
            reports, heat, message = read(good)
            assert "reports ranked" in message and reports.count("<tr>") == 1 + 3 and heat is not None
    finally:
        page.close()
