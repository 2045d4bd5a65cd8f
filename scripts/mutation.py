"""Helpers of scripts/mutation.sh: the mutation targets, the hand-made mutants and the table.

    python scripts/mutation.py targets                       # every target, in order
    python scripts/mutation.py globs TARGET                  # mutmut's mutant globs of one target
    python scripts/mutation.py file TARGET                   # the target's source file
    python scripts/mutation.py rerun --mutants DIR TARGET    # what to rerun after an earlier run (see rerun())
    python scripts/mutation.py hand --source DIR --out FILE [TARGET ...]
    python scripts/mutation.py report --mutants DIR --hand FILE --equivalents FILE [--previous DIR ...] [TARGET ...]

mutmut names a mutant ``<module>.x_<function>__mutmut_<n>`` or ``<module>.xǁ<Class>ǁ<method>__mutmut_<n>``.
It cannot mutate functions under a decorator other than staticmethod/classmethod, so the classes that
``lmaps_plugin.inversebench.scattering`` and ``.mri`` build from mixins (their ``adjoint``) get
hand-made mutants here, as do the two re-noising mutants of docs/results/mutation.md.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LIN = "lmaps_plugin.operators.linear."
BLUR = "lmaps_plugin.operators.blur."
IBA = "lmaps_plugin.inversebench.algebra."
IBS = "lmaps_plugin.inversebench.scattering."
IBM = "lmaps_plugin.inversebench.mri."

#: target -> (file, mutmut globs). A glob without ``__mutmut_`` also names the function for mutmut's test lookup.
TARGETS: dict[str, tuple[str, list[str]]] = {
    "schedules": ("lmaps_plugin/schedules.py", ["lmaps_plugin.schedules.*"]),
    "sampler": ("lmaps_plugin/sampler.py", ["lmaps_plugin.sampler.*"]),
    "algorithm": ("lmaps_plugin/algorithm.py", ["lmaps_plugin.algorithm.*"]),
    "weighting": ("lmaps_plugin/weighting.py", ["lmaps_plugin.weighting.*"]),
    "local_map_objective": ("lmaps_plugin/local_map/objective.py", ["lmaps_plugin.local_map.objective.*"]),
    "local_map_gd": ("lmaps_plugin/local_map/gd.py", ["lmaps_plugin.local_map.gd.*"]),
    "local_map_exact": ("lmaps_plugin/local_map/exact.py", ["lmaps_plugin.local_map.exact.*"]),
    "local_map_spectrum": ("lmaps_plugin/local_map/spectrum.py", ["lmaps_plugin.local_map.spectrum.*"]),
    "local_map_solve": ("lmaps_plugin/local_map/solve.py", ["lmaps_plugin.local_map.solve.*"]),
    "capabilities": ("lmaps_plugin/operators/capabilities.py", ["lmaps_plugin.operators.capabilities.*"]),
    "gmm": ("lmaps_plugin/priors/gmm.py", ["lmaps_plugin.priors.gmm.*"]),
    "adjoints_base": ("lmaps_plugin/operators/base.py", ["lmaps_plugin.operators.base.xǁLinearOperatorǁgradient*"]),
    "adjoints_simple": ("lmaps_plugin/operators/matrix.py", ["lmaps_plugin.operators.matrix.xǁMatrixOperatorǁadjoint*"]),
    "adjoints_linear": ("lmaps_plugin/operators/linear.py", [
        LIN + "xǁImageLinearOperatorǁadjoint*", LIN + "xǁSuperResolutionǁ_apply_adjoint*",
        LIN + "xǁSuperResolutionǁ_matrices*", LIN + "xǁMaskInpaintingǁ_apply_adjoint*",
        LIN + "xǁMaskInpaintingǁ_mask*"]),
    "adjoints_blur": ("lmaps_plugin/operators/blur.py", [
        BLUR + "x_reflect_pad_adjoint*", BLUR + "xǁKernelBlurǁ_apply_adjoint*", BLUR + "xǁKernelBlurǁ_separable*"]),
    "inversebench_algebra": ("lmaps_plugin/inversebench/algebra.py", [
        IBA + "x_analytic_gradient*", IBA + "x_as_complex*"]),
    "inversebench_scattering": ("lmaps_plugin/inversebench/scattering.py", [IBS + "x_born_field_transpose*"]),
    "inversebench_mri": ("lmaps_plugin/inversebench/mri.py", [
        IBM + "x_centered_ifft2_adjoint*", IBM + "x__complex_to_channels*"]),
}


@dataclass(frozen=True)
class HandMutant:
    name: str
    target: str
    old: str          # must occur exactly once in the target's file
    new: str
    tests: tuple[str, ...]
    what: str


HAND_MUTANTS = [
    HandMutant("hand_renoise_reuses_noise", "schedules", "return x0 + sigma_next * noise",
               "return x0 + sigma_next * (x - x0) / sigma", ("tests/core/test_schedules.py",),
               "eta = 1 re-noises with the previous noise (x − x0)/σ instead of fresh noise"),
    HandMutant("hand_renoise_around_denoised", "solver", "x = renoise(x0, x, sigma, sigma_next, noise, ddim_eta)",
               "x = renoise(x0_hat, x, sigma, sigma_next, noise, ddim_eta)",
               ("tests/core/test_solver.py::test_lmaps_lands_between_modes_less_often_than_posterior_mean_updates",),
               "re-noise around x̂0 instead of the local MAP (the local MAP never feeds the trajectory)"),
    HandMutant("hand_scatter_adjoint_drops_scale", "inversebench_scattering",
               "return (self.unnorm_scale * back).reshape(-1, 1, self.Ny, self.Nx)",
               "return back.reshape(-1, 1, self.Ny, self.Nx)", ("tests/inversebench/test_inversebench_operators.py",),
               "scattering adjoint forgets unnormalize's scale"),
    HandMutant("hand_scatter_adjoint_conjugates_incident", "inversebench_scattering",
               "back = born_field_transpose(y, self._incident_t, self._green, self._cell)",
               "back = born_field_transpose(y, self._incident_conj_t, self._green, self._cell)",
               ("tests/inversebench/test_inversebench_operators.py",), "scattering adjoint with the conjugated incident field"),
    HandMutant("hand_mri_adjoint_drops_conj", "inversebench_mri",
               "return _complex_to_channels((maps.conj() * coil_images).sum(dim=1))",
               "return _complex_to_channels((maps * coil_images).sum(dim=1))",
               ("tests/inversebench/test_inversebench_operators.py",), "MRI adjoint without conj(maps)"),
    HandMutant("hand_mri_adjoint_averages_coils", "inversebench_mri",
               "return _complex_to_channels((maps.conj() * coil_images).sum(dim=1))",
               "return _complex_to_channels((maps.conj() * coil_images).mean(dim=1))",
               ("tests/inversebench/test_inversebench_operators.py",), "MRI adjoint averages the coils instead of summing"),
    HandMutant("hand_mri_adjoint_drops_mask", "inversebench_mri",
               "coil_images = centered_ifft2_adjoint(self.mask * kspace)",
               "coil_images = centered_ifft2_adjoint(kspace)",
               ("tests/inversebench/test_inversebench_operators.py",), "MRI adjoint without the sampling mask"),
]

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", None: "not checked",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 34: "skipped"}


def status_of(code) -> str:
    return STATUS.get(code, "suspicious")


def matches(name: str, target: str) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in TARGETS[target][1])


# -- hand-made mutants ------------------------------------------------------------------------------

def run_hand(source: Path, out: Path, targets: list[str]) -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="lmaps-hand-") as scratch:
        tree = Path(scratch) / "src"
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns("mutants", "__pycache__", ".venv", ".git", "outputs"))
        for mutant in (m for m in HAND_MUTANTS if m.target in targets):
            path = tree / TARGETS[mutant.target][0]
            original = path.read_text()
            if original.count(mutant.old) != 1:
                results[mutant.name] = {"status": "stale", "what": mutant.what, "target": mutant.target,
                                        "tests": list(mutant.tests)}
                print(f"{mutant.name}: the code it mutates is gone or ambiguous (update scripts/mutation.py)",
                      file=sys.stderr)
                continue
            path.write_text(original.replace(mutant.old, mutant.new))
            try:
                proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                       *mutant.tests], cwd=tree, capture_output=True, text=True,
                                      env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
            finally:
                path.write_text(original)
            failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
            status = {0: "survived", 1: "killed"}.get(proc.returncode, f"error (pytest exit {proc.returncode})")
            results[mutant.name] = {"status": status, "what": mutant.what, "target": mutant.target,
                                    "tests": list(mutant.tests), "killed_by": failed}
            print(f"{mutant.name}: {status} {' '.join(failed)}", file=sys.stderr)
    out.write_text(json.dumps(results, indent=1))


# -- the table --------------------------------------------------------------------------------------

def load_equivalents(path: Path) -> dict[str, str]:
    """``name<TAB>reason`` per line (``#`` comments); a name may be a glob."""
    found = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, reason = line.partition("\t")
            found[name.strip()] = reason.strip()
    return found


def load_mutmut(mutants: Path) -> dict[str, object]:
    codes = {}
    for meta in mutants.rglob("*.py.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def merge_previous(codes: dict[str, object], previous: Path, mutants: Path) -> dict[str, object]:
    """This run's results, where a mutant it did not check (see :func:`rerun`) keeps the earlier run's result;
    a file this run did not mutate at all keeps every earlier result."""
    merged = dict(codes)
    for meta in previous.rglob("*.py.meta"):
        earlier = json.loads(meta.read_text())["exit_code_by_key"]
        if not (mutants / meta.relative_to(previous)).exists():
            merged.update(earlier)
            continue
        for name, code in earlier.items():
            if name in merged and merged[name] is None:
                merged[name] = code
    return merged


KILLED = ("killed", "timeout")


def function_hashes(path: Path) -> dict[str, str]:
    """mutmut's hash of each function's AST (``x_name`` / ``xǁClassǁmethod``) in a source file."""
    from mutmut.mutation.file_mutation import compute_function_hashes

    return compute_function_hashes(path.read_text())


def rerun(previous: Path, target: str) -> list[str]:
    """The mutants of ``target`` to run after an earlier run whose ``mutants`` folder is ``previous``: every
    mutant of a function that is new or changed since then (by mutmut's AST hash), and the earlier survivors of
    the unchanged functions. The earlier kills of unchanged functions stand: tests are only ever added (rerun
    in full after weakening a test)."""
    path, _ = TARGETS[target]
    meta = json.loads((previous / (path + ".meta")).read_text())
    old = meta.get("hash_by_function_name", {})
    module = path[:-3].replace("/", ".")
    names = []
    for key, digest in function_hashes(Path(path)).items():
        glob = f"{module}.{key}__mutmut_*"
        if not any(fnmatch.fnmatchcase(f"{module}.{key}__mutmut_1", g) for g in TARGETS[target][1]):
            continue
        if old.get(key) != digest:
            names.append(glob)
        else:
            names += sorted(n for n, c in meta["exit_code_by_key"].items()
                            if n.startswith(f"{module}.{key}__mutmut_") and status_of(c) not in KILLED)
    return names


def report(mutants: Path, hand: Path, equivalents: Path, targets: list[str], previous: list[Path] = ()) -> int:
    codes = load_mutmut(mutants)
    for earlier in previous:        # newest first: each fills in what the runs after it did not check
        codes = merge_previous(codes, earlier, mutants)
    hand_results = json.loads(hand.read_text()) if hand.exists() else {}
    equivalent = load_equivalents(equivalents)

    def is_equivalent(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in equivalent)

    rows, open_survivors = [], []
    for target in targets:
        names = {n: status_of(c) for n, c in codes.items() if matches(n, target)}
        names.update({n: r["status"] for n, r in hand_results.items() if r["target"] == target})
        count = dict(killed=0, survived=0, equivalent=0, no_tests=0, other=0)
        for name, status in sorted(names.items()):
            if status in KILLED:
                count["killed"] += 1
            elif status in ("survived", "no tests") and is_equivalent(name):
                count["equivalent"] += 1
            elif status in ("survived", "no tests"):
                count[status.replace(" ", "_")] += 1
                open_survivors.append(name)
            else:
                count["other"] += 1
                open_survivors.append(f"{name} ({status})")
        live = len(names) - count["equivalent"]
        score = 100.0 * count["killed"] / live if live else 100.0
        rows.append((target, TARGETS[target][0], len(names), count, score))
    print("| target | file | mutants | killed | survived | no tests | equivalent | other | killed / non-equivalent |")
    print("|---|---|---|---|---|---|---|---|---|")
    total = dict(n=0, killed=0, survived=0, no_tests=0, equivalent=0, other=0)
    for target, path, n, c, score in rows:
        print(f"| {target} | `{path}` | {n} | {c['killed']} | {c['survived']} | {c['no_tests']} | "
              f"{c['equivalent']} | {c['other']} | {score:.1f} % |")
        total["n"] += n
        for key in ("killed", "survived", "no_tests", "equivalent", "other"):
            total[key] += c[key]
    live = total["n"] - total["equivalent"]
    print(f"| **all** | | {total['n']} | {total['killed']} | {total['survived']} | {total['no_tests']} | "
          f"{total['equivalent']} | {total['other']} | {100.0 * total['killed'] / max(live, 1):.1f} % |")
    if hand_results:
        print("\nhand-made mutants:")
        for name, r in hand_results.items():
            if r["target"] in targets:
                print(f"  {name}: {r['status']} ({r['what']}); tests {', '.join(r['tests'])}"
                      + (f"; killed by {', '.join(x.removeprefix('FAILED ') for x in r.get('killed_by', []))}"
                         if r.get("killed_by") else ""))
    if open_survivors:
        print(f"\n{len(open_survivors)} surviving mutants not listed as equivalent "
              "(mutmut show <name> in the scratch folder's src/ prints each):")
        for name in open_survivors:
            print(f"  {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("targets")
    g = sub.add_parser("globs")
    g.add_argument("target", choices=list(TARGETS))
    f = sub.add_parser("file")
    f.add_argument("target", choices=list(TARGETS))
    s = sub.add_parser("rerun")
    s.add_argument("--mutants", type=Path, required=True)
    s.add_argument("target", choices=list(TARGETS))
    h = sub.add_parser("hand")
    h.add_argument("--source", type=Path, required=True)
    h.add_argument("--out", type=Path, required=True)
    h.add_argument("targets", nargs="*")
    r = sub.add_parser("report")
    r.add_argument("--mutants", type=Path, required=True)
    r.add_argument("--hand", type=Path, required=True)
    r.add_argument("--equivalents", type=Path, required=True)
    r.add_argument("--previous", type=Path, action="append", default=[],
                   help="an earlier run's mutants folder (repeat, newest first)")
    r.add_argument("targets", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "targets":
        print("\n".join(TARGETS))
        return 0
    if args.command == "globs":
        print("\n".join(TARGETS[args.target][1]))
        return 0
    if args.command == "file":
        print(TARGETS[args.target][0])
        return 0
    if args.command == "rerun":
        print("\n".join(rerun(args.mutants, args.target)))
        return 0
    targets = args.targets or list(TARGETS)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; one of {list(TARGETS)}")
    if args.command == "hand":
        run_hand(args.source, args.out, targets)
        return 0
    return report(args.mutants, args.hand, args.equivalents, targets, args.previous)


if __name__ == "__main__":
    raise SystemExit(main())
