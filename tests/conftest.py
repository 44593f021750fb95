import os

import pytest
import torch

# Two cores here: keep torch from oversubscribing when pytest runs notebooks and tests side by side.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny tensors (2D toys) run fastest on one thread: intra-op threading only adds overhead there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
