import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests run offline and quietly; two cores are shared by everything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LIMITR_NO_PROGRESS", "1")


@pytest.fixture(scope="session", autouse=True)
def gradio_files_in_the_session_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Gradio fixes some of its folders when first imported: keep them in the session's folder,
    not the system's /tmp (tests of the page's own private folder unset this for themselves)."""
    os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A folder shared by one test module and removed when the module ends (a module's runs
    of the real text encoder hold gigabytes of checkpoints)."""
    folder = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
