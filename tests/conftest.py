"""Shared pytest set-up: markers, and a deterministic, single-process torch."""
import os

import pytest
import torch

# Keep the suite predictable on 2-core CI machines (and silence OpenMP oversubscription).
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'slow: end-to-end runs (training, multi-process); select with -m slow')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
