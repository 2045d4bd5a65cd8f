import pytest
import torch

# Tests use small tensors: one thread is faster and immune to OpenMP spin contention.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def blur_weights(tmp_path_factory):
    """A tiny random-weight blur-network file (3 channels) for the ``nonlinear_deblur`` operator."""
    from lmaps_plugin.operators.nonlinear import BlurKernelNetwork
    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("blurnet") / "tiny_blur.pt"
    BlurKernelNetwork(channels=3, latent_dim=4, kernel_size=5, hidden=4).save(path)
    return path
