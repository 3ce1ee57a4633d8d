"""`train.seed`: a training seed of its own, falling back to `base.seed`."""

from __future__ import annotations

import pytest

from limitr.errors import LimitrError
from limitr.train.config import TrainConfig
from stages.train import training_seed


def test_train_seed_overrides_base_seed() -> None:
    assert training_seed({"seed": 3}, {"seed": 7}) == 3
    assert training_seed({"seed": 0}, {"seed": 7}) == 0  # 0 is a seed, not "unset"
    assert training_seed({"seed": None}, {"seed": 7}) == 7
    assert training_seed({}, {}) == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "one", True])
def test_bad_seed_is_a_clear_error(bad) -> None:
    with pytest.raises(LimitrError, match="seed"):
        training_seed({"seed": bad}, {})


def test_the_loop_config_ignores_the_stage_keys() -> None:
    cfg = TrainConfig.from_dict({"seed": 4, "out": "x", "epochs": 2})
    assert cfg.epochs == 2 and not hasattr(cfg, "seed")
    with pytest.raises(LimitrError, match="unknown key"):
        TrainConfig.from_dict({"seeds": 4})
