"""Tiny stand-in algorithms for the app's tests (importable by Hydra's ``_target_``; tests/ is on sys.path, and
subprocesses get it through PYTHONPATH). They return the observation as the reconstruction (inpainting-shaped
tasks), so a run takes milliseconds."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path


class StatsAlgorithm:
    """Sets ``last_run_stats`` after each call, as the LMAPS solver does."""

    def __init__(self, net=None, forward_op=None, **kwargs):
        self.calls = 0

    def inference(self, observation, num_samples=1):
        self.calls += 1
        self.last_run_stats = {"cg_relative_residual_max": 1e-7 * self.calls, "cg_iterations_mean": 10.0 + self.calls,
                               "guard_steps": 0}
        return observation.clamp(-1, 1).repeat(num_samples, 1, 1, 1)


class GatedAlgorithm:
    """Logs each call (pid, observation digest) to the file ``$LMAPS_TEST_LOG``, then waits until the file
    ``$LMAPS_TEST_GATE`` exists. Both come from the environment, so that runs gated differently share one
    configuration (and config hash)."""

    def __init__(self, net=None, forward_op=None, **kwargs):
        self.gate, self.log = Path(os.environ["LMAPS_TEST_GATE"]), Path(os.environ["LMAPS_TEST_LOG"])

    def inference(self, observation, num_samples=1):
        digest = hashlib.sha256(observation.detach().cpu().numpy().tobytes()).hexdigest()[:16]
        with open(self.log, "a") as handle:
            handle.write(f"{os.getpid()} {digest}\n")
        deadline = time.monotonic() + 300
        while not self.gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return observation.clamp(-1, 1).repeat(num_samples, 1, 1, 1)
