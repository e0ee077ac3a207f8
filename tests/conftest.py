import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# at most 2 threads, and no more than the CPUs this process may run on (`taskset -c 0 make test`: the suite on one
# thread, another reduction order)
torch.set_num_threads(max(1, min(2, len(os.sched_getaffinity(0)))))


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
