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


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_progress_a_line_every_few_percent() -> None:
    import io

    from stages.common import LogProgress

    out, clock = io.StringIO(), _Clock()
    bar = LogProgress(10_000, "preprocess", unit="study", file=out, clock=clock)
    for _ in range(10_000):
        clock.now += 0.001
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert 19 <= len(lines) <= 21  # every 5 percent, not thousands of updates
    assert lines[-1].startswith("preprocess: 10000/10000 (100%) study")


def test_log_progress_a_line_every_30_seconds_when_slow_or_unknown() -> None:
    import io

    from stages.common import LogProgress

    out, clock = io.StringIO(), _Clock()
    bar = LogProgress(None, "train", unit="step", file=out, clock=clock)
    for _ in range(100):  # 100 steps of 10 s: a line each 30 s
        clock.now += 10.0
        bar.set_postfix(loss="0.5")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert 33 <= len(lines) <= 35 and "loss=0.5" in lines[0]


def test_log_progress_says_nothing_when_no_work_was_done() -> None:
    import io

    from stages.common import LogProgress

    out, clock = io.StringIO(), _Clock()
    bar = LogProgress(None, "train", unit="step", file=out, clock=clock)
    clock.now += 3.0  # a stage that stops on bad input before its first step
    bar.close()
    assert out.getvalue() == ""
    bar = LogProgress(10, "embed", unit="item", file=out, clock=clock)
    bar.update(4)
    bar.close()
    assert out.getvalue().splitlines() == ["embed: 4/10 (40%) item, 0 s, 0 item/s"]


def test_progress_bar_in_a_log_is_plain_lines(monkeypatch) -> None:
    import io

    from stages import common

    monkeypatch.delenv("LIMITR_NO_PROGRESS", raising=False)
    fake = io.StringIO()  # not a terminal
    monkeypatch.setattr(common.sys, "stderr", fake)
    bar = common.progress_bar(100, "tokenize", unit="text")
    assert isinstance(bar, common.LogProgress)
    with bar:
        bar.update(100)
    assert fake.getvalue().count("\n") == 1 and "\r" not in fake.getvalue()
    monkeypatch.setenv("LIMITR_NO_PROGRESS", "1")
    with common.progress_bar(100, "tokenize") as quiet:
        quiet.update(100)
    assert fake.getvalue().count("\n") == 1
