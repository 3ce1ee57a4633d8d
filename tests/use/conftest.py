"""Fixtures of the tests of limitr/use: one tiny pipeline output shared by the module's tests."""

from __future__ import annotations

import pytest
from use_fixtures import build, embed


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A saved tiny model, its shards, tokens and embeddings, and the original image files."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    paths = build(tmp_path_factory.mktemp("tiny_run"))
    embed(paths)
    torch.set_num_threads(threads)
    return paths
