import os

import pytest
import torch

# Tests use small tensors: one thread is faster and immune to OpenMP spin contention.
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
