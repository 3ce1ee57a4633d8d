"""`limitr compare` (paired bootstrap of two runs) and `limitr seeds` (the dvc commands it
queues, and the mean ± sd table from a `dvc exp show --json` document)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import stages.compare  # noqa: F401  (registers the command)
import stages.seeds  # noqa: F401
from limitr.eval import bootstrap as B
from limitr.eval import metrics as M
from limitr.eval.seeds import collect, queue_commands, summarise
from stages.cli import app
from stages.evaluate import SUMMARY_KEYS

runner = CliRunner()
EXP_SHOW = Path(__file__).with_name("exp_show.json")


def _run_folder(folder: Path, keys, i2t, t2i, margin, labels) -> Path:
    folder.mkdir(parents=True)
    B.write_per_study_tsv(folder / B.RANKS_FILE, keys, {"i2t_total": i2t, "t2i_total": t2i,
                                                        "i2t_global": i2t + 1, "t2i_global": t2i + 1})
    B.write_per_study_tsv(folder / B.MARGINS_FILE, keys, {"Edema:margin": margin, "Edema:label": labels})
    return folder


@pytest.fixture
def runs(tmp_path: Path):
    rng = np.random.default_rng(0)
    n = 200
    keys = np.arange(1000, 1000 + n)
    i2t, t2i = rng.integers(1, 40, n).astype(float), rng.integers(1, 40, n).astype(float)
    labels = rng.choice([0.0, 1.0, np.nan], n)
    margin = rng.normal(size=n) + labels * 0.5
    a = _run_folder(tmp_path / "a", keys, i2t, t2i, margin, labels)
    order = rng.permutation(n)  # the same studies in another order
    b = _run_folder(tmp_path / "b", keys[order], np.maximum(i2t - 8, 1)[order], t2i[order], margin[order] + 5 * (labels[order] == 1), labels[order])
    return a, b, (keys, i2t, t2i, margin, labels)


def test_compare_a_run_with_itself_and_with_a_better_one(runs) -> None:
    a, b, (keys, i2t, t2i, margin, labels) = runs
    same = B.compare_runs(a, a, 300, 0)
    assert all(r["difference"] == 0 and r["better"] == "neither" for r in same["rows"])
    assert [r["figure"] for r in same["rows"]] == [*B.RECALL_FIGURES, "auroc"]
    found = {r["figure"]: r for r in B.compare_runs(b, a, 300, 0)["rows"]}
    assert found["i2t_R@10"]["better"] == "A" and found["auroc"]["better"] == "A"
    assert found["t2i_R@10"]["better"] == "neither" and found["t2i_R@10"]["difference"] == 0
    assert found["i2t_R@5"]["b"] == pytest.approx(M.rank_metrics(i2t)["R@5"])
    want = M.zero_shot_auroc(margin, np.zeros_like(margin), labels)["auroc"]
    assert found["auroc"]["b"] == pytest.approx(want)
    # a run's combined score against its own global part
    own = {r["figure"]: r for r in B.compare_runs(a, a, 300, 0, "total", "global")["rows"]}
    assert own["r_sum"]["difference"] > 0


def test_compare_command_prints_and_refuses_other_splits(runs, tmp_path: Path) -> None:
    a, b, (keys, i2t, t2i, margin, labels) = runs
    result = runner.invoke(app, ["compare", str(b), str(a), "--samples", "200", "--out", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    assert "i2t_R@10" in result.output and "A better" in result.output
    assert json.loads((tmp_path / "c.json").read_text())["samples"] == 200
    other = _run_folder(tmp_path / "other", keys + 1, i2t, t2i, margin, labels)
    result = runner.invoke(app, ["compare", str(a), str(other), "--samples", "50"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "test splits differ" in lines[0], result.output
    result = runner.invoke(app, ["compare", str(a), str(tmp_path), "--samples", "50"])  # no ranks.tsv
    assert result.exit_code == 1 and "ranks.tsv is missing" in result.output


def test_queue_commands_are_the_dvc_commands_of_each_seed() -> None:
    assert queue_commands("nolateral", [0, 1], ["model.lateral=false", "train.epochs=4"]) == [
        ["dvc", "exp", "run", "--queue", "--name", "nolateral-s0", "-S", "train.seed=0",
         "-S", "model.lateral=false", "-S", "train.epochs=4"],
        ["dvc", "exp", "run", "--queue", "--name", "nolateral-s1", "-S", "train.seed=1",
         "-S", "model.lateral=false", "-S", "train.epochs=4"],
    ]
    result = runner.invoke(app, ["seeds", "--n", "2", "--first", "5", "--name", "lw0",
                                 "-S", "model.score_local_weight=0", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "dvc exp run --queue --name lw0-s5 -S train.seed=5 -S model.score_local_weight=0",
        "dvc exp run --queue --name lw0-s6 -S train.seed=6 -S model.score_local_weight=0",
        "dvc exp run --run-all --jobs 1",
        "dvc exp show --json",
    ]
    for bad in (["--name", "a b"], ["-S", "train.seed=3"], ["-S", "nonsense"]):
        result = runner.invoke(app, ["seeds", "--dry-run", *bad])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, bad


def test_seed_table_from_an_exp_show_document() -> None:
    document = json.loads(EXP_SHOW.read_text())
    found = collect(document, "nolateral")
    assert [r["name"] for r in found["runs"]] == ["nolateral-s0", "nolateral-s1", "nolateral-s2"]
    assert [r["seed"] for r in found["runs"]] == [0, 1, 2]
    assert found["unfinished"] == ["nolateral-s3", "nolateral-s4"]  # queued and failed
    rows = {r["figure"]: r for r in summarise(found["runs"], SUMMARY_KEYS)}
    assert rows["r_sum"]["mean"] == pytest.approx(111.0) and rows["r_sum"]["sd"] == pytest.approx(7.0)
    assert rows["auroc"]["mean"] == pytest.approx(0.6986667, abs=1e-6) and rows["r_sum"]["n"] == 3
    assert rows["best_epoch"]["sd"] == 0.0 and not any(k.endswith(("_lo", "_hi")) for k in rows)
    assert [r["name"] for r in collect(document, "seeds")["runs"]] == ["seeds-s0"]
    assert collect(document, "absent") == {"runs": [], "unfinished": []}


def test_seeds_summarise_command(tmp_path: Path) -> None:
    result = runner.invoke(app, ["seeds", "--name", "nolateral", "--summarise", "--exp-json", str(EXP_SHOW),
                                 "--out", str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.output
    assert "over 3 seeds (0, 1, 2)" in result.output and "111.00 ± 7.00" in result.output
    assert "sd 6.3% of the mean" in result.output and "nolateral-s3" in result.output
    assert json.loads((tmp_path / "t.json").read_text())["name"] == "nolateral"
    result = runner.invoke(app, ["seeds", "--name", "absent", "--summarise", "--exp-json", str(EXP_SHOW)])
    assert result.exit_code == 1 and "no finished experiment" in result.output


def test_seed_settings_are_checked_before_anything_is_queued() -> None:
    import yaml

    from limitr.errors import LimitrError
    from limitr.eval.seeds import check_settings

    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    check_settings(params, ["model.lateral=false", "train.epochs=2", "model.image_weights=null"])
    with pytest.raises(LimitrError, match="unknown key model.lateraal; did you mean lateral"):
        check_settings(params, ["model.lateraal=false"])
    with pytest.raises(LimitrError, match="model.lateral"):
        check_settings(params, ["model.lateral=maybe"])
    with pytest.raises(LimitrError, match="train.epochs"):
        check_settings(params, ["train.epochs=0"])
    assert params["model"]["lateral"] is True  # the params read are left as they were


def _retrieval(combined: tuple[float, float, float], glob: tuple[float, float, float],
               local: tuple[float, float, float]) -> str:
    """A retrieval.json of (i2t R@10, t2i R@10, r_sum) per score."""
    def part(f):
        return {"i2t": {"R@10": f[0]}, "t2i": {"R@10": f[1]}, "r_sum": f[2]}
    return json.dumps({"full": part(combined), "by_score": {"global": part(glob), "local": part(local)}})


def test_seed_table_adds_each_part_of_the_score_from_the_experiments_commits() -> None:
    from limitr.eval.seeds import score_parts
    from stages.seeds import seed_table

    document = json.loads(EXP_SHOW.read_text())
    revs = [r["rev"] for r in collect(document, "nolateral")["runs"]]
    files = {  # combined, global, local per seed: gains 2, 4, 0 in r_sum
        revs[0]: _retrieval((20, 22, 60), (19, 21, 58), (10, 12, 30)),
        revs[1]: _retrieval((21, 23, 64), (19, 22, 60), (11, 12, 32)),
        revs[2]: _retrieval((19, 20, 55), (19, 20, 55), (9, 10, 28)),
    }
    asked = []

    def read(rev, path):
        asked.append(path)
        return files.get(rev)

    rows, found = seed_table(document, "nolateral", read=read)
    table = dict(rows)
    assert set(asked) == {"metrics/retrieval.json"}
    assert table["gain_r_sum"].startswith("2.00 ± 2.00") and table["global_r_sum"].startswith("57.67 ±")
    assert table["gain_i2t_R@10"].startswith("1.00 ± 1.00") and table["local_t2i_R@10"].startswith("11.33 ±")
    assert found["runs"][2]["metrics"]["gain_t2i_R@10"] == 0.0
    # a run whose commit has no such file: the parts are left out of the table, the rest stays
    rows, _ = seed_table(document, "nolateral", read=lambda rev, path: files.get(rev) if rev != revs[1] else None)
    assert "gain_r_sum" not in dict(rows) and "r_sum" in dict(rows)
    assert score_parts({"full": {"r_sum": 1.0}}) == {} and score_parts(None) == {}
