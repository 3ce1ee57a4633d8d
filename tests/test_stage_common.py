"""The shared stage plumbing: params sections, overrides, fatal errors, atomic outputs."""

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from limitr.errors import LimitrError
from stages.common import atomic_dir, optional_path, override, section, stage_errors


def test_section_and_override(tmp_path: Path) -> None:
    params = tmp_path / "p.yaml"
    params.write_text("base:\n  seed: 3\nsynthesize:\n  n_studies: 10\n  out: x\n")
    cfg = section(params, "synthesize")
    assert cfg == {"n_studies": 10, "out": "x", "fault_rate": 0.0, "image_scale": 0.125, "workers": None}
    assert override(None, cfg, "n_studies") == 10
    assert override(5, cfg, "n_studies") == 5
    assert override(None, cfg, "absent", default=7) == 7
    assert section(params, "tokenize")["max_length"] == 97  # an absent section: its defaults


def test_missing_params_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LimitrError, match="does not exist"):
        section(tmp_path / "nope.yaml", "base")


def test_bad_yaml_is_a_clear_error(tmp_path: Path) -> None:
    params = tmp_path / "p.yaml"
    params.write_text("base: [unclosed\n")
    with pytest.raises(LimitrError, match="not valid YAML"):
        section(params, "base")


@pytest.mark.parametrize("value", [None, "", "null", "None", " none "])
def test_optional_path_nulls(value) -> None:
    assert optional_path(value) is None


def test_optional_path_value() -> None:
    assert optional_path("a/b.csv") == Path("a/b.csv")


def test_stage_errors_one_line_exit_code() -> None:
    app = typer.Typer()

    @app.command()
    def boom() -> None:
        with stage_errors():
            raise LimitrError("the root data/x holds no files/ folder")

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 1
    assert "the root data/x holds no files/ folder" in result.output
    assert "Traceback" not in result.output


def test_atomic_dir_replaces_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"

    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("second")
            raise RuntimeError("stage failed half way")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("third")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
