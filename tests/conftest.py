"""Shared pytest set-up: markers, seeding, and torch threads per kind of test."""
import os

import pytest
import torch

_CORES = min(2, os.cpu_count() or 1)


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'slow: end-to-end runs (training, multi-process); select with -m slow')
    config.addinivalue_line(
        'markers', 'demo_short: the short demo trainings the oldest-stack run includes')


@pytest.fixture(autouse=True)
def _threads_and_seed(request):
    """Unit tests are many tiny ops, which intra-op threads only slow down (OpenMP spinning
    costs more than the op); end-to-end tests (marked slow) train real models and use the
    cores."""
    torch.set_num_threads(_CORES if request.node.get_closest_marker('slow') else 1)
    torch.manual_seed(0)
    yield
