"""lmaps_plugin.inversebench: lazy discovery of a checkout, and the adapters for its defects.

Without a checkout: importing lmaps-plugin never imports InverseBench, and a task that
needs it says so and how to get one.  With ``INVERSEBENCH_ROOT`` set: the adapters are
checked on small random inputs against independent truths (an explicit sum for the
scattering field, closed-form PSNR, per-sample means).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lmaps_plugin import inversebench as ib

UPSTREAM_MODULES = ("inverse_problems", "algo", "eval", "training", "models", "piq", "torchvision")

requires_inversebench = pytest.mark.skipif(not os.environ.get("INVERSEBENCH_ROOT"),
                                           reason="INVERSEBENCH_ROOT is not set")


def run_clean_python(code: str, cwd, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter without INVERSEBENCH_ROOT/PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("INVERSEBENCH_ROOT", "PYTHONPATH")}
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------- without a checkout
@pytest.fixture(scope="module")
def clean_interpreter(tmp_path_factory):
    """One fresh interpreter without a checkout: which modules importing us loads, and the errors."""
    result = run_clean_python(f"""
        import json, sys
        import lmaps_plugin, lmaps_plugin.inversebench, lmaps_plugin.inversebench.adapters
        loaded = [m for m in {UPSTREAM_MODULES!r} if m in sys.modules]
        from lmaps_plugin.inversebench import InverseBenchNotFound, InverseScatter, require_inversebench
        errors = []
        for attempt in (lambda: require_inversebench(task="Black-hole imaging"),
                        lambda: InverseScatter(numRec=360)):
            try:
                attempt()
            except InverseBenchNotFound as err:
                errors.append([isinstance(err, ImportError), str(err)])
        print(json.dumps({{"loaded": loaded, "errors": errors}}))
        """, cwd=tmp_path_factory.mktemp("clean"))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_never_imports_inversebench(clean_interpreter):
    assert clean_interpreter["loaded"] == []


def test_missing_checkout_error_says_what_and_how(clean_interpreter):
    (direct_is_import_error, direct), (factory_is_import_error, factory) = clean_interpreter["errors"]
    assert direct_is_import_error and factory_is_import_error
    assert direct.startswith("Black-hole imaging needs an InverseBench checkout")
    assert factory.startswith("Linear inverse scattering")  # a factory names its own task
    for message in (direct, factory):
        assert "INVERSEBENCH_ROOT is not set" in message
        assert "git clone https://github.com/devzhk/InverseBench" in message
        assert "export INVERSEBENCH_ROOT=" in message
        assert ib.PINNED_COMMIT in message


def test_wrong_inversebench_root_is_an_error_not_absence(tmp_path, monkeypatch):
    monkeypatch.setenv("INVERSEBENCH_ROOT", str(tmp_path))
    with pytest.raises(ib.InverseBenchNotFound, match="INVERSEBENCH_ROOT=.*is not an InverseBench checkout"):
        ib.require_inversebench(task="anything")


def test_upstream_datasets_get_every_key_but_the_apps_they_do_not_take():
    from lmaps_plugin.inversebench.factories import upstream_dataset

    class Upstream:          # InverseBench's LMDBData takes resolution, not name/channels/num_images
        def __init__(self, root, resolution=128, id_list=None):
            self.args = (root, resolution, id_list)

    made = upstream_dataset(Upstream, {"root": "r", "resolution": 64, "id_list": "0,2", "name": "cells",
                                       "channels": 1, "num_images": 4})
    assert made.args == ("r", 64, "0,2")
    with pytest.raises(TypeError, match="image_size"):   # a key of the user's own still reaches the class
        upstream_dataset(Upstream, {"root": "r", "image_size": 32, "name": "cells"})


def test_pinned_commit_is_a_full_hash():
    assert len(ib.PINNED_COMMIT) == 40 and int(ib.PINNED_COMMIT, 16) >= 0


def test_black_hole_labels_follow_the_columns():
    """Upstream reads columns 1, 2, 3 as f=10, 15, 20; they hold f=0, 10, 15 (column 0 is unblurred)."""
    from lmaps_plugin.inversebench.adapters import BLACK_HOLE_BLUR_FACTORS, black_hole_psnr_metrics

    assert BLACK_HOLE_BLUR_FACTORS == (0, 10, 15, 20)
    columns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0],
                            [10.0, 0.0, 30.0, 0.0, 50.0]])  # rows: samples; best over rows
    assert black_hole_psnr_metrics(columns) == {
        "psnr": 10.0, "blur_psnr (f=10)": 30.0, "blur_psnr (f=15)": 4.0, "blur_psnr (f=20)": 50.0}


def test_write_metrics_files(tmp_path):
    from lmaps_plugin.inversebench.adapters import write_metrics

    write_metrics(tmp_path, {"psnr": [20.0, torch.tensor(40.0)], "ssim": [0.5]},
                  summary={"psnr": 30.0, "psnr_std": 10.0, "ssim": float("nan")}, metric_backend="piq")
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert payload["schema"] == "lmaps-metrics/1" and payload["complete"] is True
    assert payload["metric_backend"] == "piq"
    assert payload["summary"] == {"psnr": 30.0, "psnr_std": 10.0, "ssim": None}    # the evaluator's compute()
    assert payload["per_sample"] == {"psnr": [20.0, 40.0], "ssim": [0.5, None]}
    assert payload["samples"] == {"0": {"psnr": 20.0, "ssim": 0.5}, "1": {"psnr": 40.0}}
    assert payload["stats"]["psnr"] == {"mean": 30.0, "std": 10.0, "n": 2} and payload["ids"] == [0, 1]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows == ["id,psnr,ssim", "0,20,0.5", "1,40,", "mean,30,0.5", "std,10,0"]
    write_metrics(tmp_path, {"psnr": [20.0]}, summary=None)                # a run still going
    assert json.loads((tmp_path / "metrics.json").read_text())["complete"] is False


# ------------------------------------------------------------------------ with a checkout
@pytest.fixture(scope="module")
def scatter_op():
    return ib.InverseScatter(Nx=16, Ny=16, numTrans=4, numRec=12, svd=False, sigma_noise=1e-4,
                             unnorm_shift=1.0, unnorm_scale=0.5, device="cpu")


def scattered_field_by_sum(op, x: torch.Tensor) -> torch.Tensor:
    """u_scat[b, t, r] = dx·dy·Σ_p conj(f_b[p]·u_in[p, t])·G[p, r], f = unnormalize(x)."""
    f = op.unnormalize(x.to(torch.float64))[:, 0].flatten(1)                 # (B, P)
    u_in = op.uinc_dom_set[..., 0].reshape(-1, op.numTrans)                  # (P, T)
    green = op.sensor_greens_function_set[..., 0].reshape(-1, op.numRec)     # (P, R)
    return op.dx * op.dy * torch.einsum("bp,pt,pr->btr", f.to(u_in.dtype), u_in.conj(), green)


@pytest.mark.inversebench
@requires_inversebench
def test_scattering_factory_returns_their_class(scatter_op):
    upstream = ib.import_upstream("inverse_problems.inverse_scatter", "test").InverseScatter
    assert isinstance(scatter_op, upstream)
    for name in ("piq", "torchvision"):  # stand-ins never outlive the import
        if name in sys.modules:
            assert "stand-in" not in (sys.modules[name].__doc__ or "")


@pytest.mark.inversebench
@requires_inversebench
def test_scattering_forward_is_batched(scatter_op):
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batched = scatter_op.forward(x)
    assert batched.shape == (3, 4, 12)
    torch.testing.assert_close(batched, scattered_field_by_sum(scatter_op, x))
    for i in range(3):
        torch.testing.assert_close(batched[i:i + 1], scatter_op.forward(x[i:i + 1]))


@pytest.mark.inversebench
@requires_inversebench
def test_scattering_gradient_of_each_sample_is_its_own(scatter_op):
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = scatter_op.forward(torch.zeros(1, 1, 16, 16))
    grads = scatter_op.gradient(x, y)
    for i in range(2):
        torch.testing.assert_close(grads[i:i + 1], scatter_op.gradient(x[i:i + 1], y))
    assert grads[1].abs().max() > 0  # upstream's forward leaves element 1 without gradient


@pytest.mark.inversebench
@requires_inversebench
def test_evaluator_writes_metrics_file(scatter_op, tmp_path):
    evaluator = ib.InverseScatterEvaluator(forward_op=scatter_op, metrics_dir=str(tmp_path / "exp"))
    target = 0.2 + 0.5 * torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    for offset in (0.1, 0.01):  # PSNR = -10·log10(offset²) = 20 dB, 40 dB
        evaluator(pred=target + offset, target=target)
    partial = json.loads((tmp_path / "exp" / "metrics.json").read_text())
    assert partial["complete"] is False and len(partial["per_sample"]["psnr"]) == 2
    summary = evaluator.compute()
    payload = json.loads((tmp_path / "exp" / "metrics.json").read_text())
    assert payload["complete"] is True
    assert payload["per_sample"]["psnr"] == pytest.approx([20.0, 40.0], abs=1e-3)
    assert payload["summary"]["psnr"] == pytest.approx(30.0, abs=1e-3)
    assert payload["summary"]["psnr_std"] == pytest.approx(10.0, abs=1e-3)
    assert payload["summary"]["psnr"] == pytest.approx(float(summary["psnr"]))
    assert (tmp_path / "exp" / "metrics.csv").read_text().splitlines()[0] == "id,psnr,ssim"


def make_mri_sample(size=32, coils=4, seed=3):
    """A noiseless multi-coil sample in InverseBench's dict layout (batch of one)."""
    from inverse_problems.multi_coil_mri import MultiCoilMRI as Upstream

    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(1, coils, size, size, dtype=torch.complex128, generator=g)
    maps = maps / maps.abs().square().sum(dim=1, keepdim=True).sqrt()
    image = torch.randn(1, size, size, dtype=torch.complex128, generator=g)
    kspace = Upstream.fft(maps * image[:, None])
    target = torch.view_as_real(image).permute(0, 3, 1, 2).float()
    return {"maps": maps, "kspace": kspace, "target": target}


def dynamic_range_psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR of magnitude images with the target's maximum as data range (eval.MRI's metric)."""
    mag = lambda t: torch.view_as_complex(t.permute(0, 2, 3, 1).contiguous().double()).abs()
    p, t = mag(pred)[0], mag(target)[0]
    peak = t.max()
    mse = ((p.clip(0, peak) - t) / peak).square().mean()
    return float(-10 * torch.log10(mse + 1e-8))


@pytest.fixture(scope="module")
def mri():
    op = ib.MultiCoilMRI(total_lines=32, acceleration_ratio=4, device="cpu")
    data = make_mri_sample()
    observation = op(data)
    return op, data, observation


@pytest.mark.inversebench
@requires_inversebench
def test_mri_several_samples_give_the_mean_of_single_samples(mri):
    op, data, observation = mri
    target = data["target"]
    preds = target.repeat(3, 1, 1, 1) + 0.05 * torch.randn(3, 2, 32, 32, generator=torch.Generator().manual_seed(4))
    evaluator = ib.MRIEvaluator(forward_op=op)
    together = evaluator(preds, target, observation=observation)
    single = [evaluator(preds[i:i + 1], target, observation=observation) for i in range(3)]
    for key in ("psnr", "ssim", "data misfit"):
        assert together[key] == pytest.approx(sum(s[key] for s in single) / 3, rel=1e-6), key
    for i in range(3):
        assert single[i]["psnr"] == pytest.approx(dynamic_range_psnr(preds[i:i + 1], target), abs=1e-4)
    stock = ib.import_upstream("eval", "test").MRI(forward_op=op)
    assert stock(preds, target, observation=observation)["psnr"] == 0.0  # upstream's defect


@pytest.mark.inversebench
@requires_inversebench
def test_mri_misfit_of_the_truth_is_zero(mri):
    op, data, observation = mri
    metrics = ib.MRIEvaluator(forward_op=op)(data["target"].double(), data["target"], observation=observation)
    assert metrics["data misfit"] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.inversebench
@requires_inversebench
def test_mri_eval_only_run_skips_misfit_instead_of_crashing(mri, tmp_path):
    _, data, observation = mri
    fresh_op = ib.MultiCoilMRI(total_lines=32, acceleration_ratio=4, device="cpu")  # never called
    evaluator = ib.MRIEvaluator(forward_op=fresh_op, metrics_dir=str(tmp_path))
    with pytest.warns(RuntimeWarning, match="data misfit skipped"):
        metrics = evaluator(data["target"], data["target"], observation=observation)
    assert "data misfit" not in metrics and metrics["psnr"] > 70
    stock = ib.import_upstream("eval", "test").MRI(forward_op=fresh_op)
    with pytest.raises(AttributeError, match="maps"):  # upstream's defect
        stock(data["target"], data["target"], observation=observation)


@pytest.mark.inversebench
@requires_inversebench
def test_black_hole_evaluator_names_columns_by_their_blur():
    class FakeBlackHole:
        device = "cpu"

        def evaluate_chisq(self, pred, observation, normalize):
            assert observation.shape[0] == pred.shape[0]
            return torch.tensor([3.0, 2.0]), torch.tensor([5.0, 4.0])

        def evaluate_psnr(self, target, pred, blur_factors):
            self.blur_factors = tuple(blur_factors)
            return torch.tensor([[11.0, 12.0, 13.0, 14.0, 15.0], [21.0, 0.0, 0.0, 0.0, 0.0]])[:len(pred)]

        @staticmethod
        def aligned_images(target, pred):  # the ensemble keys (tests/inversebench/test_inversebench_ensemble.py)
            return pred

    op = FakeBlackHole()
    evaluator = ib.BlackHoleEvaluator(forward_op=op)
    metrics = evaluator(torch.zeros(2, 1, 4, 4), torch.zeros(1, 1, 4, 4), observation=torch.zeros(1, 1, 9, 1))
    assert op.blur_factors == (0, 10, 15, 20)
    upstream_keys = {"cp_chi2": 2.0, "camp_chi2": 4.0, "psnr": 21.0, "blur_psnr (f=10)": 13.0,
                     "blur_psnr (f=15)": 14.0, "blur_psnr (f=20)": 15.0}
    assert {k: metrics[k] for k in upstream_keys} == upstream_keys
    assert evaluator.compute()["blur_psnr (f=20)"] == 15.0


@pytest.mark.inversebench
@requires_inversebench
def test_checkout_on_sys_path_is_found_without_the_variable(tmp_path):
    root = os.environ["INVERSEBENCH_ROOT"]
    result = run_clean_python("""
        from lmaps_plugin.inversebench import find_inversebench
        print(find_inversebench())
        """, cwd=root)
    assert result.returncode == 0, result.stderr
    assert os.path.samefile(result.stdout.strip(), root)


@pytest.mark.inversebench
@requires_inversebench
def test_fixed_problem_configs_compose_in_inversebench():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    expected = {"inv-scatter-fixed": ("InverseScatter", "LMDBData", "InverseScatterEvaluator"),
                "multi-coil-mri-knee-fixed": ("MultiCoilMRI", "MultiCoilMRIData", "MRIEvaluator"),
                "multi-coil-mri-knee-lmdb-fixed": ("MultiCoilMRI", "MultiCoilMRILMDBData", "MRIEvaluator"),
                "blackhole-fixed": ("BlackHoleImaging", "BlackHoleData", "BlackHoleEvaluator")}
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(os.path.join(os.environ["INVERSEBENCH_ROOT"], "configs"), version_base="1.3"):
            for problem, targets in expected.items():
                cfg = compose("config", overrides=[f"problem={problem}", "algorithm=dps"])
                p = cfg.problem
                assert [p.model._target_, p.data._target_, p.evaluator._target_] == [
                    f"lmaps_plugin.inversebench.{t}" for t in targets]
                assert p.evaluator.metrics_dir == os.path.join(p.exp_dir, "DPS", "default")
                assert p.prior  # inherited from the stock problem config
    finally:
        GlobalHydra.instance().clear()


def test_missing_optional_dependency_names_the_package_and_the_extra(tmp_path, monkeypatch):
    """An InverseBench module that imports a package we lack fails with what to install."""
    from lmaps_plugin import inversebench

    root = tmp_path / "ib"
    for marker in ("inverse_problems/base.py", "algo/base.py"):
        (root / marker).parent.mkdir(parents=True, exist_ok=True)
        (root / marker).write_text("")
    (root / "inverse_problems" / "__init__.py").write_text("")
    (root / "inverse_problems" / "needs_sigpy_zz.py").write_text("import sigpy_not_installed_zz\n")
    monkeypatch.setenv("INVERSEBENCH_ROOT", str(root))
    monkeypatch.setitem(inversebench.EXTRA_FOR_PACKAGE, "sigpy_not_installed_zz", "mri")
    monkeypatch.syspath_prepend(str(root))
    def upstream_modules():
        return [m for m in sys.modules if m == "inverse_problems" or m.startswith("inverse_problems.")]

    for name in upstream_modules():
        monkeypatch.delitem(sys.modules, name)        # restored at teardown
    try:
        with pytest.raises(ModuleNotFoundError) as info:
            inversebench.import_upstream("inverse_problems.needs_sigpy_zz", "Multi-coil CS-MRI")
    finally:  # the fake package must not stay cached: later tests in this process import the real one
        for name in upstream_modules():
            del sys.modules[name]
    message = str(info.value)
    assert "Multi-coil CS-MRI needs the Python package 'sigpy_not_installed_zz'" in message
    assert "lmaps-plugin[mri]" in message
