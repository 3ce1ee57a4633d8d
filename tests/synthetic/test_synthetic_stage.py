"""The ``synthesize`` and ``sheet`` commands: params defaults, option overrides, the
summary, help text, one-line errors and the example sheet."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

import stages.sheet  # noqa: F401  (registers the command)
import stages.synthesize  # noqa: F401
from stages.cli import app

runner = CliRunner()


def _params(tmp_path: Path, out: Path) -> Path:
    params = tmp_path / "params.yaml"
    params.write_text(f"base:\n  seed: 5\nsynthesize:\n  out: {out}\n  n_studies: 7\n  fault_rate: 0.0\n"
                      "  image_scale: 0.05\n  workers: 1\n")
    return params


def test_synthesize_reads_params_and_prints_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    result = runner.invoke(app, ["synthesize", "--params", str(_params(tmp_path, out))])
    assert result.exit_code == 0, result.output
    for word in ("studies", "images", "train", "validate", "test", "findings", "faults", "time"):
        assert word in result.output
    truth = (out / "ground_truth.jsonl").read_text().splitlines()
    assert len(truth) == 7
    # options override params; the folder is replaced, not merged
    result = runner.invoke(app, ["synthesize", "--params", str(_params(tmp_path, out)), "--n-studies", "9",
                                 "--seed", "6", "--fault-rate", "0.5"])
    assert result.exit_code == 0, result.output
    assert len((out / "ground_truth.jsonl").read_text().splitlines()) == 9
    assert json.loads((out / "faults.json").read_text())
    assert not list(tmp_path.glob(".syn.tmp-*")) + list(tmp_path.glob(".syn.old-*")), \
        "no temporary folders left behind"  # (.syn.lock, the one-writer lock, stays beside it)


def test_synthesize_help_explains_every_option() -> None:
    result = runner.invoke(app, ["synthesize", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--out", "--n-studies", "--seed", "--fault-rate", "--image-scale", "--workers", "--params"):
        assert option in result.output


def test_synthesize_bad_value_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    result = runner.invoke(app, ["synthesize", "--params", str(_params(tmp_path, out)), "--image-scale", "9"])
    assert result.exit_code == 1
    assert "image_scale" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_sheet_draws_a_png(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    params = _params(tmp_path, out)
    assert runner.invoke(app, ["synthesize", "--params", str(params), "--n-studies", "12"]).exit_code == 0
    png = tmp_path / "sheet.png"
    result = runner.invoke(app, ["sheet", "--params", str(params), "--out", str(png), "--n", "2"])
    assert result.exit_code == 0, result.output
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 800 and im.height > 300
    result = runner.invoke(app, ["sheet", "--root", str(tmp_path / "nothing"), "--out", str(png)])
    assert result.exit_code == 1 and "ground_truth.jsonl" in result.output
