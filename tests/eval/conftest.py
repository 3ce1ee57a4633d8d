"""Fixtures of the evaluation tests."""

import pytest
import torch
from eval_fixtures import StubModel


@pytest.fixture
def stub_model() -> StubModel:
    torch.manual_seed(0)
    return StubModel().eval()
