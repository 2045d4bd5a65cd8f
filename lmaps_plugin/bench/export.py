"""``lmaps-bench export RESULTS... --format inversebench --out DIR``: finished results as a submission folder in
InverseBench's table layout (:mod:`.export_layouts`).

RESULTS are ``lmaps-bench run``/``compare`` folders (sample records ``result_*.json`` beside each folder's
``config.yaml``; ``benchmark.json``; ``leaderboard.json``) and/or stock-``main.py`` experiment folders
(``{problem.exp_dir}/{algorithm.name}/{exp_name}/`` with our ``metrics.json`` and ``.hydra/config.yaml`` or
``config.yaml``). Per table (a physical problem, or the image tasks of one prior), DIR gets ``<table>.md``,
``<table>.tex`` and ``<table>_samples.csv``; then ``tables.md`` (every table), ``configs/`` (each config used,
verbatim, named by its hash, and any tuned algorithm configs), the input ``leaderboard.json`` (validated; the
machine-readable source) and ``provenance.json``.

Exit status: 0 every requested sample is in; 1 some are missing (written anyway, each named); 2 a results folder
that cannot be used (one line).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import fnmatch
import hashlib
import io
import json
import os
import platform
import re
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ..app import results as R
from ..evaluation.metrics_file import METRICS_JSON
from ..inversebench import PINNED_COMMIT
from ..io import atomic_write_json, atomic_write_text, read_json_file
from . import leaderboard
from .aggregate import LEADERBOARD, package_versions
from .arguments import UsageError
from .export_layouts import (COST_COLUMNS, Sample, Table, config_value, latex, layout_for, markdown, notes,
                             seconds_of)
from .sweep import read_manifest

FORMATS = ("inversebench",)
PROVENANCE = "provenance.json"
HYDRA_CONFIG = Path(".hydra") / "config.yaml"


@dataclass
class Folder:
    """One results folder: its config (parsed and verbatim), where it came from, and its samples."""
    path: Path
    kind: str                       # "lmaps" (sample records) or "main.py" (metrics.json only)
    config: dict | None
    config_text: str | None
    config_path: Path | None
    samples: dict = field(default_factory=dict)     # id -> (metrics, seconds, num_samples, config_hash)
    missing: dict = field(default_factory=dict)     # id -> reason
    unavailable: dict = field(default_factory=dict)
    seed: int = 0


@dataclass
class Collected:
    folders: list = field(default_factory=list)
    leaderboards: list = field(default_factory=list)     # (source path, document)
    manifests: list = field(default_factory=list)        # (root, manifest)
    tuned: list = field(default_factory=list)            # (root, tuned config path)


def _hidden(path: Path, root: Path) -> bool:
    """In a hidden folder (``.lmaps/``, ``.replaced/``) or a tuning study's ``trials/`` (validation images, never
    test results)."""
    return any(part.startswith(".") or part == "trials" for part in path.relative_to(root).parts[:-1])


def _read_config(folder: Path) -> tuple[dict | None, str | None, Path | None]:
    for candidate in (folder / HYDRA_CONFIG, folder / "config.yaml"):
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8")
            try:
                parsed = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise UsageError(f"{candidate} is not YAML ({str(exc).splitlines()[0]})") from None
            return (parsed if isinstance(parsed, dict) else None), text, candidate
    return None, None, None


def _lmaps_folder(folder: Path) -> Folder:
    """A folder of sample records: the ok ones whose ``.pt`` matches (SHA-256), the failed and requested ones."""
    config, text, path = _read_config(folder)
    out = Folder(folder, "lmaps", config, text, path)
    for record_file in sorted(folder.glob("result_*.json")):
        sample_id = R.result_file_id(record_file.name, "json")
        record = R.read_record(record_file, sample_id) if sample_id is not None else None
        if record is None:
            continue
        out.seed = int(record.get("seed", out.seed))
        out.unavailable.update(record.get("unavailable") or {})
        if record["status"] == "ok" and R.verified(folder, sample_id, record):
            out.samples[sample_id] = (dict(record.get("metrics", {})), record.get("seconds"),
                                      int(record.get("num_samples", 1)), record.get("config_hash"),
                                      record.get("task"), record.get("algorithm"), record.get("prior"))
        else:
            out.missing[sample_id] = f"failed: {record.get('reason', 'unverified result')}"
    document, _ = read_json_file(folder / METRICS_JSON)
    if isinstance(document, dict):
        for sample_id in document.get("requested") or []:
            if isinstance(sample_id, int) and sample_id not in out.samples:
                out.missing.setdefault(sample_id, "not run")
    return out


def _stock_folder(folder: Path) -> Folder | None:
    """A stock-``main.py`` folder: our ``metrics.json`` (``samples``, ``missing``, ``failed``) and its config."""
    document, problem = read_json_file(folder / METRICS_JSON)
    if problem is not None or not isinstance(document, dict) or not isinstance(document.get("samples"), dict):
        warnings.warn(f"{folder / METRICS_JSON}: not a metrics file ({problem or 'no samples'}); skipped",
                      RuntimeWarning, stacklevel=2)
        return None
    config, text, path = _read_config(folder)
    out = Folder(folder, "main.py", config, text, path, seed=int((config or {}).get("seed", 0) or 0))
    num_samples = int((config or {}).get("num_samples", 1) or 1)
    for key, metrics in document["samples"].items():
        if isinstance(metrics, dict) and str(key).isdigit():
            clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            out.samples[int(key)] = (clean, None, num_samples, None, None, None, None)
    failed = document.get("failed") or {}
    for sample_id in document.get("missing") or []:
        out.missing[int(sample_id)] = f"failed: {failed[str(sample_id)]}" if str(sample_id) in failed else "not run"
    out.unavailable.update(document.get("unavailable") or {})
    return out


def _leaderboard(root: Path, collected: Collected) -> None:
    path = root / LEADERBOARD
    if not path.is_file():
        return
    problems = leaderboard.file_problems(path)
    if problems:
        raise UsageError(f"{path} is not a valid leaderboard ({len(problems)} problem(s), first: {problems[0]}); "
                         f"run lmaps-bench aggregate --exp-dir {root} to rebuild it")
    collected.leaderboards.append((path, json.loads(path.read_text(encoding="utf-8"))))


def collect(roots: list[str]) -> Collected:
    """Every usable results folder under ``roots``; :class:`UsageError` for a root that cannot be used."""
    collected = Collected()
    for given in roots:
        root = Path(given)
        if not root.is_dir():
            raise UsageError(f"results folder {root} does not exist or is not a folder")
        manifest = read_manifest(root)
        if manifest:
            collected.manifests.append((root, manifest))
        _leaderboard(root, collected)
        folders = {p.parent for p in root.rglob("result_*.json") if not _hidden(p, root)}
        stock = {p.parent for p in root.rglob(METRICS_JSON) if not _hidden(p, root)} - folders
        found = [_lmaps_folder(f) for f in sorted(folders)]
        found += [f for f in (_stock_folder(p) for p in sorted(stock)) if f is not None]
        if not any(f.samples or f.missing for f in found):
            raise UsageError(f"{root} holds no results (no result_*.json records and no metrics.json)")
        collected.folders += found
        collected.tuned += [(root, p) for p in sorted(root.rglob("*.yaml"))
                            if "/configs/algorithm/tuned/" in p.as_posix() and not _hidden(p, root)]
    return collected


def _rename(name: str, renames: list[tuple[str, str]]) -> str:
    for pattern, label in renames:
        if fnmatch.fnmatchcase(name, pattern):
            return label
    return name


def _identity(folder: Folder, info: tuple) -> tuple[str, str, str]:
    """(problem, algorithm, prior) of a folder's sample: the record's, else its config's, else its path's."""
    _, _, _, _, task, algorithm, prior = info
    cfg = folder.config or {}
    problem = task or config_value(cfg, "problem.name") or folder.path.parent.parent.name
    algorithm = algorithm or config_value(cfg, "algorithm.name") or folder.path.parent.name
    prior = prior or config_value(cfg, "prior.name") or config_value(cfg, "pretrain.name") \
        or Path(str(config_value(cfg, "problem.prior") or "?")).stem
    return str(problem), str(algorithm), str(prior)


def _setting(layout, folder: Folder, problem: str) -> tuple[str, tuple]:
    if layout.setting_key is None:
        return problem, (0, problem)
    value = config_value(folder.config, layout.setting_key)
    if value is None:
        return "?", (2, "?")
    rank = layout.setting_order.index(value) if value in layout.setting_order else len(layout.setting_order)
    return layout.setting_label(value), (1, rank, str(value))


def build_tables(collected: Collected, renames: list[tuple[str, str]]) -> dict[str, Table]:
    """Group every sample into its table; missing samples go with their folder's table and setting."""
    tables: dict[str, Table] = {}
    order = {}
    for _, manifest in collected.manifests:
        names = manifest.get("algorithm_names") or {}
        for a in manifest.get("algorithms", []):
            order.setdefault(names.get(a, a), len(order))
    ranked = sorted(collected.folders, key=lambda f: (order.get(_identity(f, (None,) * 7)[1], len(order)),
                                                      str(f.path)))
    for folder in ranked:
        any_info = next(iter(folder.samples.values()), (None,) * 7)
        problem, algorithm, prior = _identity(folder, any_info)
        metric_names = {k for m, *_ in folder.samples.values() for k in m}
        layout = layout_for(problem, metric_names)
        key = prior if layout.family == "image" else problem
        table = tables.setdefault(f"{layout.family}:{key}", Table(layout, key))
        setting, rank = _setting(layout, folder, problem)
        method = _rename(algorithm, renames)
        table.unavailable.update(folder.unavailable)
        config_file = _config_name(folder, any_info[3])
        for sample_id, (metrics, seconds, m, chash, *_rest) in sorted(folder.samples.items()):
            table.samples.append(Sample(problem, key, setting, rank, method, algorithm, folder.seed, sample_id, m,
                                        metrics, seconds, str(folder.path), chash, config_file))
        table.missing += [{"setting": setting, "method": method, "seed": folder.seed, "id": i, "reason": r}
                          for i, r in sorted(folder.missing.items())]
    return tables


def _manifest_missing(collected: Collected) -> list[dict]:
    """Requested (task, algorithm, seed) runs of a ``benchmark.json`` with no folder at all."""
    have = {(s, a, f.seed) for f in collected.folders for s, a, _ in
            [_identity(f, next(iter(f.samples.values()), (None,) * 7))]}
    out = []
    for root, manifest in collected.manifests:
        tasks, algos = manifest.get("task_names") or {}, manifest.get("algorithm_names") or {}
        for t in manifest.get("tasks", []):
            for a in manifest.get("algorithms", []):
                for seed in manifest.get("seeds", []):
                    if (tasks.get(t, t), algos.get(a, a), seed) not in have:
                        out += [{"problem": tasks.get(t, t), "method": algos.get(a, a), "seed": seed, "id": i,
                                 "reason": f"not run (requested in {root / 'benchmark.json'})"}
                                for i in manifest.get("ids", [])]
    return out


def _config_name(folder: Folder, config_hash: str | None) -> str | None:
    """``configs/<problem>/<algorithm>/<hash[:16]>.yaml``: the record's config hash, else the text's SHA-256."""
    if folder.config_text is None:
        return None
    problem, algorithm, _ = _identity(folder, next(iter(folder.samples.values()), (None,) * 7))
    digest = hashlib.sha256(folder.config_text.encode("utf-8")).hexdigest()
    return f"configs/{_slug(problem)}/{_slug(algorithm)}/{(config_hash or digest)[:16]}.yaml"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def _write_configs(collected: Collected, out: Path) -> list[dict]:
    """Each folder's config verbatim (a header comment names its source and hash); tuned configs as found."""
    written: dict[str, dict] = {}
    for folder in collected.folders:
        info = next(iter(folder.samples.values()), (None,) * 7)
        name = _config_name(folder, info[3])
        if name is None:
            continue
        entry = written.setdefault(name, {"file": name, "kind": folder.kind, "config_hash": info[3],
                                          "sha256": hashlib.sha256(folder.config_text.encode()).hexdigest(),
                                          "sources": []})
        entry["sources"].append(str(folder.config_path))
        header = (f"# {'composed config of the lmaps app' if folder.kind == 'lmaps' else 'stock main.py config'}"
                  f" from {folder.config_path}\n# config_hash: {info[3] or '(none: main.py)'}\n"
                  f"# sha256 of the text below: {entry['sha256']}\n")
        atomic_write_text(out / name, header + folder.config_text)
    for root, path in collected.tuned:
        name = f"configs/tuned/{tuned_config_name(path.relative_to(root))}"
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / name)
        written[name] = {"file": name, "kind": "tuned algorithm config", "config_hash": None,
                         "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "sources": [str(path)]}
    return list(written.values())


def tuned_config_name(relative: Path) -> str:
    """A tuned config's name below ``configs/algorithm/tuned/`` (``<prior>/<task>/<algorithm>.yaml``), wherever that
    folder sits under the results root (``compare``'s ``tune/configs/...``, or ``configs/...`` at the root)."""
    return ("/" + relative.as_posix()).split("/configs/algorithm/tuned/")[-1]


def samples_csv(table: Table) -> str:
    """One row per (method, setting, seed, id): the layout's metrics, every other metric found, the cost."""
    metric_keys = [m.key for m in table.layout.metrics]
    costs = [c[0] for c in COST_COLUMNS if c[0] != "seconds"]
    extra = sorted({k for s in table.samples for k in s.metrics} - set(metric_keys) - set(costs)
                   - {"network_seconds", "solver_seconds"})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["problem", "setting", "method", "algorithm", "seed", "id", "num_samples", *metric_keys,
                     *costs, "seconds_per_image", *extra, "config_hash", "config_file", "source"])
    for s in table.samples:
        values = [s.metrics.get(k, "") for k in (*metric_keys, *costs)]
        secs = seconds_of(s.metrics, s.seconds)
        writer.writerow([s.problem, s.setting, s.method, s.algorithm, s.seed, s.id, s.num_samples, *values,
                         "" if secs is None else secs, *(s.metrics.get(k, "") for k in extra),
                         s.config_hash or "", s.config_file or "", s.source])
    for item in table.missing:
        writer.writerow([table.key, item["setting"], item["method"], "", item["seed"], item["id"], "",
                         *(["missing"] * (len(metric_keys) + len(costs) + 1 + len(extra))), "", "", item["reason"]])
    return buffer.getvalue()


def hardware() -> dict:
    device = "cpu"
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s))"
    return {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_device": device, "torch_cuda": torch.version.cuda}


def provenance(collected: Collected, configs: list[dict], files: list[str], missing: list[dict],
               command: list[str]) -> dict:
    versions = package_versions()
    return {
        "kind": "lmaps-inversebench-export", "format": "inversebench",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "package_versions": versions,
        "inversebench": {"pinned_commit": PINNED_COMMIT, "checkout_commit": versions.get("inversebench"),
                         "root": os.environ.get("INVERSEBENCH_ROOT")},
        "hardware": hardware(),
        "hardware_note": "the machine that ran the export; the runs' own hosts are not recorded in their results",
        "run_commands": [{"root": str(r), "command": m.get("command")} for r, m in collected.manifests],
        "leaderboards": [{"source": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                          "schema_version": d.get("schema_version"), "valid": True} for p, d in collected.leaderboards],
        "configs": configs,
        "config_hashes": sorted({c["config_hash"] for c in configs if c.get("config_hash")}),
        "files": files,
        "missing": missing,
    }


def export(roots: list[str], out_dir: str, renames: list[tuple[str, str]], command: list[str]) -> int:
    """Write the submission folder; return 0, or 1 when requested samples are missing."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        collected = collect(roots)
    for w in caught:
        print(f"lmaps-bench export: warning: {w.message}", file=sys.stderr)
    out = Path(out_dir)
    tables = build_tables(collected, renames)
    files = []
    blocks = []
    for key, table in tables.items():
        if not table.samples:
            continue
        slug = _slug(f"{table.layout.family}_{table.key}" if table.layout.family == "image" else table.key)
        md = markdown(table)
        atomic_write_text(out / f"{slug}.md", md)
        atomic_write_text(out / f"{slug}.tex", latex(table))
        atomic_write_text(out / f"{slug}_samples.csv", samples_csv(table))
        files += [f"{slug}.md", f"{slug}.tex", f"{slug}_samples.csv"]
        blocks.append(md)
    atomic_write_text(out / "tables.md", "\n".join(blocks) or "(no finished samples)\n")
    for k, (path, _) in enumerate(collected.leaderboards):
        name = LEADERBOARD if len(collected.leaderboards) == 1 else f"leaderboard_{k}.json"
        shutil.copyfile(path, out / name)
        files.append(name)
    configs = _write_configs(collected, out)
    missing = [{"table": t.key, **m} for t in tables.values() for m in t.missing] + _manifest_missing(collected)
    for t in tables.values():
        if not t.samples and t.missing:
            print(f"lmaps-bench export: no finished sample for {t.key}: {'; '.join(notes(t))}", file=sys.stderr)
    atomic_write_json(out / PROVENANCE, provenance(collected, configs, ["tables.md", *files], missing, command))
    print("\n".join(blocks))
    print(f"written: {out} ({len(blocks)} table(s), {len(configs)} config(s), {PROVENANCE})")
    if missing:
        print(f"lmaps-bench export: {len(missing)} requested sample(s) missing: "
              + "; ".join(f"{m.get('problem', m.get('table'))}/{m['method']} seed {m['seed']} id {m['id']} "
                          f"({m['reason']})" for m in missing[:10]) + (" …" if len(missing) > 10 else ""),
              file=sys.stderr)
        return 1
    return 0


def _rename_pair(text: str) -> tuple[str, str]:
    pattern, sep, label = text.partition("=")
    if not sep or not pattern or not label:
        raise argparse.ArgumentTypeError(f"expected PATTERN=LABEL, got {text!r}")
    return pattern, label


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="lmaps-bench run/compare folders and/or main.py exp folders")
    parser.add_argument("--format", default="inversebench", choices=FORMATS)
    parser.add_argument("--out", required=True, help="the submission folder to write")
    parser.add_argument("--rename", type=_rename_pair, action="append", default=[], metavar="PATTERN=LABEL",
                        help="row label for algorithm names matching a glob, e.g. 'LMAPS-lis-*=LMAPS' (repeatable)")


def run(args: argparse.Namespace) -> int:
    command = ["lmaps-bench", "export", *args.results, "--format", args.format, "--out", args.out]
    for pattern, label in args.rename:
        command += ["--rename", f"{pattern}={label}"]
    return export(args.results, args.out, args.rename, command)


#: (name, help, add_arguments, run) of ``lmaps-bench export``
SUBCOMMAND = ("export", "write InverseBench-layout tables (Markdown, LaTeX), per-sample CSV, configs and "
                        "provenance from finished results", add_arguments, run)
