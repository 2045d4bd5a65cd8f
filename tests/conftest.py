import os
import sys
from pathlib import Path

import pytest
import torch

#: tests/helpers holds modules the tests import by name (hand-made operators, fake algorithms that configs name as
#: ``_target_: fake_algorithms.<Class>``, the InverseBench rig's script loader)
HELPERS = Path(__file__).resolve().parent / "helpers"
sys.path.insert(0, str(HELPERS))

# Tests use small tensors: one thread is faster and immune to OpenMP spin contention.
torch.set_num_threads(1)

#: Set to 1 by .ci/run when it provides an InverseBench snapshot: then a test that skips for want of a
#: checkout fails instead, so CI cannot silently lose its InverseBench coverage.
REQUIRE_INVERSEBENCH = "LMAPS_REQUIRE_INVERSEBENCH"
MISSING_CHECKOUT = "INVERSEBENCH_ROOT is not set"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(REQUIRE_INVERSEBENCH) == "1" and MISSING_CHECKOUT in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} skipped with {MISSING_CHECKOUT!r} although {REQUIRE_INVERSEBENCH}=1: "
                           f"export INVERSEBENCH_ROOT=<checkout> (.ci/run extracts the snapshot) or unset "
                           f"{REQUIRE_INVERSEBENCH}")


@pytest.fixture(scope="session")
def blur_weights(tmp_path_factory):
    """A tiny random-weight blur-network file (3 channels) for the ``nonlinear_deblur`` operator."""
    from lmaps_plugin.operators.nonlinear import BlurKernelNetwork
    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("blurnet") / "tiny_blur.pt"
    BlurKernelNetwork(channels=3, latent_dim=4, kernel_size=5, hidden=4).save(path)
    return path
