"""The ``lmaps`` command (this module's :func:`main`): a Hydra app that reconstructs built-in test images with a diffusion prior.

    lmaps                                   # embedded default: random inpainting of 4 faces, shipped faces prior
    lmaps problem=sr4 num_images=8          # another task (configs/problem/*.yaml)
    lmaps prior=gmm                         # the exact Gaussian-mixture prior fitted on the faces train split
    lmaps algorithm=lmaps_sr4 problem=sr4   # a Table-4 row of the paper (N=200, K=100: slower)
    lmaps algorithm=ib_daps                 # an InverseBench peer (needs INVERSEBENCH_ROOT)
    lmaps num_samples=8                     # an ensemble: adds ensemble_psnr, coverage_90, ... (README "Ensembles")
    lmaps -m problem=sr4,inpaint_random seed=0,1 hydra/launcher=joblib   # a sweep (see lmaps-bench)

Config groups are InverseBench's (``problem``, ``algorithm``) plus ``prior``; the primary config is
``configs/config.yaml``. Results go to ``{exp_dir}/{problem.name}/{algorithm.name}/{exp_name}/`` (InverseBench's
``{problem.exp_dir}/{algorithm.name}/{exp_name}``): ``result_{id}.pt`` (InverseBench layout), ``result_{id}.json``,
``metrics.json``, ``metrics.csv``, ``figure.png`` and, for LMAPS, ``trajectory.png``. A rerun skips finished
samples (``resume=true``); ``overwrite=true`` redoes the requested ones and moves another configuration's results
aside (into the folder's ``.replaced/``).

The configuration is checked against one schema before any work (:mod:`lmaps_plugin.app.schema`); the folder is
locked so that concurrent runs never mix configurations (:mod:`lmaps_plugin.app.folder`). Exit codes: 0 all
requested samples finished, 1 some failed (named on stderr), 2 the configuration or the folder was refused.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

import hydra
from hydra._internal import hydra as hydra_internal
from hydra._internal import utils as hydra_utils
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import results as R
from . import schema
from .folder import FolderBusyError
from .build import FOLDER_REFUSED_ERRNOS, os_error_text
from .compose import CONFIG_NAME, CONFIG_PATH, composition_errors
from .run import SamplesFailedError, failure_line, run

#: exit codes of the ``lmaps`` command
EXIT_OK, EXIT_SAMPLES_FAILED, EXIT_USAGE = 0, 1, 2
#: errors that are the user's to fix: printed as one message, without a traceback (exit code 2)
USER_ERRORS = (schema.ConfigError, R.ConfigMismatchError, FolderBusyError)


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> None:
    """Exit codes: 0 when every requested sample finished, 1 when any failed (a summary line names them) or the run
    stopped on an error writing its files (a full disk: one line names it), 2 for a configuration the schema refuses
    or a results folder that may not be used. In a Hydra multirun the job raises instead, so the sweep reports it
    and exits non-zero after the other jobs ran."""
    global _TASK_STARTED
    _TASK_STARTED = True
    try:
        summary = run(cfg)
    except USER_ERRORS as exc:
        if _in_multirun():
            raise
        print(f"lmaps: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)
    except OSError as exc:
        if _in_multirun():
            raise
        code = EXIT_USAGE if exc.errno in FOLDER_REFUSED_ERRNOS else EXIT_SAMPLES_FAILED
        print(f"lmaps: the run stopped: cannot write its files ({os_error_text(exc)}); finished samples are kept, "
              f"a rerun continues", file=sys.stderr, flush=True)
        sys.exit(code)
    if summary.failed:
        line = failure_line(summary)
        if _in_multirun():
            raise SamplesFailedError(line)
        print(line, file=sys.stderr, flush=True)
        sys.exit(EXIT_SAMPLES_FAILED)


#: set when Hydra hands the composed config to the app: errors before that are the configuration's
_TASK_STARTED = False


@contextmanager
def _composition_refusals(prog: str):
    """While Hydra composes the configuration, an error of :func:`_composition_errors` is one line on stderr and
    exit code 2 (Hydra prints it, often with a traceback, and exits 1). Errors once the app runs are untouched."""
    original = getattr(hydra_utils, "run_and_report", None)
    if original is None:  # another Hydra version: its own report stands
        yield
        return
    errors = composition_errors()

    def run_and_report(func):
        try:
            return func()
        except errors as exc:
            if _TASK_STARTED:
                return original(lambda: _reraise(exc))
            text = " ".join(str(exc).split())
            print(f"{prog}: the configuration was refused ({type(exc).__name__}: {text[:600]})", file=sys.stderr,
                  flush=True)
            sys.exit(EXIT_USAGE)
        except Exception as exc:  # noqa: BLE001 - Hydra's own report, as before
            return original(lambda: _reraise(exc))

    original_run_job = getattr(hydra_internal, "run_job", None)

    def run_job(*args, **kwargs):
        """Hydra's single run: refuse a name that would put its run folder elsewhere before Hydra makes it."""
        problems = path_name_problems(kwargs.get("config"))
        if problems:
            print(f"{prog}: {schema.ConfigError(problems)}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USAGE)
        return original_run_job(*args, **kwargs)

    hydra_utils.run_and_report = run_and_report
    if original_run_job is not None:
        hydra_internal.run_job = run_job
    try:
        yield
    finally:
        hydra_utils.run_and_report = original
        if original_run_job is not None:
            hydra_internal.run_job = original_run_job


#: the configured names that become folders of the results path (and of Hydra's run folder)
PATH_NAME_KEYS = ("exp_name", "problem.name", "algorithm.name", "prior.name")


def path_name_problems(cfg) -> list[str]:
    """:func:`lmaps_plugin.app.results.path_component_problem` of each :data:`PATH_NAME_KEYS` value the config
    sets (keys it lacks, or cannot resolve yet, are left to :func:`lmaps_plugin.app.schema.validate`)."""
    problems = []
    for key in PATH_NAME_KEYS if cfg is not None else ():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=False)
        except Exception:  # noqa: BLE001 - an interpolation only the app can resolve; the schema checks it later
            continue
        if value is not None:
            problem = R.path_component_problem(key, value)
            if problem:
                problems.append(problem)
    return problems


def _reraise(exc: BaseException):
    raise exc


def main() -> None:
    """Console script ``lmaps``."""
    global _TASK_STARTED
    _TASK_STARTED = False
    with _composition_refusals("lmaps"):
        _hydra_main()


if __name__ == "__main__":
    main()
