"""Shared test settings: small, deterministic, quiet."""

import os
import warnings

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated.*")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
