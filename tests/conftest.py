"""Shared test settings: small, deterministic, quiet."""

import os
import warnings

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers: one thread each, their subprocesses too
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated.*")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
