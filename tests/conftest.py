import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _quiet_transformers():
    try:
        from transformers.utils import logging
    except ImportError:  # pragma: no cover
        yield
        return
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    yield


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Files a person should look at after a run (screenshots, plots): test-artifacts/ in the repo."""
    path = Path(__file__).parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
