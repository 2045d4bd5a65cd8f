"""The Optuna study of a tuning request: its storage (SQLite, an RDB URL or a journal file; passwords never
written), pruner and sampler, the budget, the workers' leases (OS file locks that die with their process), and
the reclaiming of dead workers' trials. Optuna loads inside the functions that use it (an optional dependency:
``pip install lmaps-plugin[tune]``)."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
import warnings
from importlib.util import find_spec
from pathlib import Path

import filelock
from omegaconf import OmegaConf

from ...app import results as R
from ...io import atomic_write_text
from .request import (BASE_CONFIG, MASK, REQUEST, STORAGE_ENV, WORKERS_DIR, TuneError, TuneRequest, prepare,
                      scrub, space_of, storage_label)
from .space import baseline_values

#: a failed (killed) trial is retried at most this many times, then left failed
MAX_RETRY = 2
#: a RUNNING trial without a worker token older than this (s) is a worker that died while starting it
START_GRACE_S = 120.0
#: RDB storages: a running trial records a heartbeat this often (s); one silent for HEARTBEAT_GRACE_S is dead
HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_GRACE_S = 300
#: the OS file lock in the study folder under which a command creates the storage and the study
STUDY_LOCK = ".study.lock"
STORAGE_ALLOWED = ("allowed: an SQLAlchemy URL of a reachable database (sqlite:///PATH.db, "
                   "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB) or journal:PATH (an Optuna journal file)")
#: SQLAlchemy schemes -> what to install for their driver
DRIVERS = {"postgresql": "pip install 'psycopg[binary]' (or lmaps-plugin[bench])",
           "mysql": "pip install pymysql, and write the URL mysql+pymysql://..."}


def storage_url(request: TuneRequest, given: str | None = None) -> str:
    """The full storage URL of a study loaded from ``request.json`` (which holds it with its password masked):
    ``given`` or ``$LMAPS_STORAGE`` where its masked form is the recorded one, else the recorded URL itself when
    nothing was masked in it."""
    for url in (given, os.environ.get(STORAGE_ENV)):
        if url and storage_label(url) == request.storage:
            return url
    if MASK in str(request.storage):
        raise TuneError(f"the study's storage {request.storage} has a password, which is never written to "
                        f"{REQUEST}: set {STORAGE_ENV} to the full URL in the worker's environment")
    return request.storage


def _driver_url(url: str) -> str:
    """``postgresql://`` with psycopg 3 and no psycopg2: SQLAlchemy before 2.1 needs ``postgresql+psycopg://``."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "postgresql" and find_spec("psycopg2") is None and find_spec("psycopg") is not None:
        return f"postgresql+psycopg://{rest}"
    return url


@contextlib.contextmanager
def study_lock(study_dir: str | os.PathLike | None):
    """An OS file lock in the study folder: two commands starting one new study at once create its tables and
    the study one after the other (concurrent creation of an RDB storage's tables fails)."""
    if study_dir is None:
        yield
        return
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(Path(study_dir) / STUDY_LOCK)):
        yield


def _storage_error(url: str, source: str, exc: BaseException) -> TuneError:
    """One line naming the storage (masked) and what is allowed, for an error opening it."""
    reason = scrub(" ".join(str(exc).split("\n")[0].split()) or type(exc).__name__, url)
    label = f"{source} {storage_label(url)}"
    if isinstance(exc, ImportError):
        scheme = url.partition("://")[0].split("+")[0]
        hint = DRIVERS.get(scheme, "install the database driver SQLAlchemy names for this URL")
        return TuneError(f"{label}: no database driver for {scheme!r} is installed ({reason}); {hint}")
    if url.startswith("journal:") or "://" not in url:
        return TuneError(f"{label}: not a readable Optuna journal file ({type(exc).__name__}: {reason}); "
                         f"give a new file or one Optuna wrote ({STORAGE_ALLOWED})")
    return TuneError(f"{label}: cannot open it as an Optuna storage ({reason}); {STORAGE_ALLOWED}")


def make_storage(url: str, source: str = "--storage"):
    """An Optuna storage: ``journal:PATH`` (or a path ending in .journal/.log) is a journal file, anything with
    ``://`` an SQLAlchemy URL (SQLite waits up to 60 s for a lock held by another worker; RDB storages record
    heartbeats, see :func:`reclaim`). Anything that cannot be opened is a :class:`TuneError` naming the URL
    (password masked) and what is allowed; ``source`` says where the URL came from."""
    import optuna  # optuna (optional: lmaps-plugin[tune])
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:") or (("://" not in url) and url.endswith((".journal", ".log"))):
        path = Path(url.removeprefix("journal:")).expanduser()
        if path.is_dir():
            raise TuneError(f"{source} {url}: a folder, not a journal file ({STORAGE_ALLOWED})")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except Exception as exc:  # noqa: BLE001 - garbage, binary or unreadable files: one line, not a traceback
            raise _storage_error(url, source, exc) from None
    if "://" not in url:
        raise TuneError(f"{source} {storage_label(url)!r} is neither an SQLAlchemy URL (sqlite:///path.db, "
                        f"postgresql://user@host/db, ...) nor journal:PATH")
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(_driver_url(url), engine_kwargs=kwargs,
                                                  heartbeat_interval=HEARTBEAT_INTERVAL_S,
                                                  grace_period=HEARTBEAT_GRACE_S)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy, driver and Optuna errors: one line, not a traceback
            # two commands creating the tables of one database at once (study folders on different hosts): the
            # loser finds them made on a second try
            if attempt < 2 and ("already exists" in str(exc) or "alembic_version" in str(exc)):
                time.sleep(0.5 + attempt)
                continue
            raise _storage_error(url, source, exc) from None
    raise AssertionError("unreachable")  # pragma: no cover


def make_pruner(request: TuneRequest):
    import optuna  # optuna (optional: lmaps-plugin[tune])

    if request.pruner == "none":
        return optuna.pruners.NopPruner()
    if request.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=request.prune_after, reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=request.prune_after)


def make_sampler(request: TuneRequest, worker: int, trials_so_far: int):
    """TPE, seeded by (seed, study, worker, trials already in the study): workers, and reruns, never replay one
    stream of draws (which would repeat finished trials' values), and studies draw independently."""
    import optuna  # optuna (optional: lmaps-plugin[tune])

    seed = int(R.config_hash({"seed": request.seed, "study": request.study_name, "worker": worker,
                              "n": trials_so_far})[:8], 16)
    startup = min(10, max(3, request.trials // 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True,
                                          constant_liar=True)


def open_study(request: TuneRequest, worker: int = 0, create: bool = False):
    """Load (or create) the request's study; refuse one made by a different request. Creating it also reclaims
    the trials of dead workers (:func:`reclaim`), so the trials still to run are counted right."""
    import optuna  # optuna (optional: lmaps-plugin[tune])

    source = STORAGE_ENV if request.storage_from_env else "--storage"
    with study_lock(request.study_dir):
        storage = make_storage(request.storage, source)
        common = dict(study_name=request.study_name, storage=storage, pruner=make_pruner(request))
        try:
            if create:
                study = optuna.create_study(direction=request.direction, load_if_exists=True,
                                            sampler=make_sampler(request, worker, 0), **common)
            else:
                study = optuna.load_study(sampler=make_sampler(request, worker, 0), **common)
            study.sampler = make_sampler(request, worker, len(study.get_trials(deepcopy=False)))
            fingerprint = json.loads(json.dumps(request.fingerprint()))
            stored = study.user_attrs.get("request")
            if stored is None:
                study.set_user_attr("request", fingerprint)
        except KeyError:
            raise TuneError(f"no study {request.study_name!r} in {source} {storage_label(request.storage)}; "
                            f"start it with lmaps-bench tune") from None
        except (ImportError, RuntimeError, OSError, ValueError) as exc:
            raise _storage_error(request.storage, source, exc) from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy errors (their text may hold the URL): one line
            if type(exc).__module__.startswith(("sqlalchemy", "psycopg", "sqlite3")):
                raise _storage_error(request.storage, source, exc) from None
            raise
    if stored is not None and stored != fingerprint:
        differ = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
        raise TuneError(f"study {request.study_name!r} in {storage_label(request.storage)} was made by a different "
                        f"request ({', '.join(differ)} differ); use another --exp-dir, --storage or --study-name")
    if study.direction.name.lower() != request.direction:
        raise TuneError(f"study {request.study_name!r} maximises/minimises differently than --metric "
                        f"{request.metric} needs")
    if create and request.study_dir:
        reclaim(study, request.study_dir)
    return study


def trial_counts(study) -> dict[str, int]:
    from optuna.trial import TrialState  # optuna (optional: lmaps-plugin[tune])

    counts = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] += 1
    return counts


def budget_left(study, budget: int) -> int:
    """Trials still to start: the budget minus finished (complete + pruned) and running trials."""
    c = trial_counts(study)
    return budget - c["complete"] - c["pruned"] - c["running"]


# ----------------------------------------------------------------------------------------- worker leases
class WorkerLease:
    """An OS file lock held by a worker for its life (``<study>/.workers/<token>.lock``); the OS drops it when
    the process dies, however it dies, so :func:`lease_alive` tells live workers from dead ones."""

    def __init__(self, study_dir: str | os.PathLike):
        self.folder = Path(study_dir) / WORKERS_DIR
        self.token = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.path = self.folder / f"{self.token}.lock"
        self._lock = None

    def __enter__(self) -> "WorkerLease":
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = filelock.FileLock(str(self.path))
        self._lock.acquire(timeout=0)
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()
            with contextlib.suppress(OSError):
                self.path.unlink()


#: a worker's lock file older than this (s) and free is a dead worker's leftover (younger ones may be a worker
#: between creating its lock file and locking it)
LEASE_SWEEP_AGE_S = 60.0


def lease_alive(study_dir: str | os.PathLike, token: str) -> bool:
    """Whether the worker ``token`` holds its lease; a free lease's lock file is removed."""
    path = Path(study_dir) / WORKERS_DIR / f"{token}.lock"
    if not path.exists():
        return False
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    lock.release()
    with contextlib.suppress(OSError):
        path.unlink()
    return False


def reclaim(study, study_dir: str | os.PathLike, max_retry: int = MAX_RETRY) -> list[int]:
    """Mark the running trials of dead workers failed, and queue a retry (same values) of every failed trial not
    retried yet (at most ``max_retry`` times per trial). A worker is dead when its lease (lock file) is free or
    gone, or, on an RDB storage, when its trial's heartbeat is older than HEARTBEAT_GRACE_S (Optuna's
    ``fail_stale_trials``: workers on hosts that do not share the study folder). The lock files dead workers
    left behind are removed. Serialised across workers by a lock in the study folder. Returns the numbers of the
    trials queued again."""
    import optuna  # optuna (optional: lmaps-plugin[tune])
    from optuna.trial import TrialState

    folder = Path(study_dir) / WORKERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    queued = []
    with filelock.FileLock(str(folder / "reclaim.lock")), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        now = time.time()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            token = t.user_attrs.get("worker")
            started = t.datetime_start.timestamp() if t.datetime_start else now
            if (token is None and now - started < START_GRACE_S) or (token is not None and
                                                                   lease_alive(study_dir, token)):
                continue
            with contextlib.suppress(ValueError, RuntimeError):
                study.tell(t.number, state=TrialState.FAIL)
        optuna.storages.fail_stale_trials(study)   # RDB storages (heartbeats); a no-op on journal files
        for path in folder.glob("*.lock"):        # a dead worker's lock without a running trial (killed between trials)
            with contextlib.suppress(OSError):
                if path.name != "reclaim.lock" and now - path.stat().st_mtime > LEASE_SWEEP_AGE_S:
                    lease_alive(study_dir, path.stem)
        trials = study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        for t in trials:
            if t.state == TrialState.FAIL and t.number not in retried:
                before = len(study.get_trials(deepcopy=False))
                retry(study, t)
                if len(study.get_trials(deepcopy=False)) > before:
                    queued.append(t.number)
    return queued


def start_study(request: TuneRequest) -> TuneRequest:
    """Prepare a study: compose and check, create the study (with the base config's values queued as its first
    trial), then write ``request.json`` and ``base_config.yaml``. Returns the completed request."""
    import optuna  # optuna (optional: lmaps-plugin[tune])

    request, base = prepare(request)
    study_dir = Path(request.study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    previous = study_dir / REQUEST
    if previous.is_file():
        old = TuneRequest.load(previous).fingerprint()
        differ = sorted(k for k, v in request.fingerprint().items() if old.get(k) != v)
        if differ:
            raise TuneError(f"{study_dir} holds a study of a different request ({', '.join(differ)} differ); "
                            f"use another --exp-dir")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(request, create=True)     # a storage that cannot be opened is refused before any write
    with study_lock(request.study_dir):          # two commands starting one study queue one baseline
        if request.baseline and not study.get_trials(deepcopy=False):
            values = baseline_values(space_of(request), lambda key: OmegaConf.select(base, key))
            study.enqueue_trial(values, user_attrs={"baseline": True})
    request.save(previous)
    atomic_write_text(study_dir / BASE_CONFIG, OmegaConf.to_yaml(base))
    print(f"lmaps-bench tune: {request.algorithm} on {request.task} (prior {request.prior_name}), "
          f"{request.metric} over val ids {request.val_ids}; budget {request.trials} trials, "
          f"{max(budget_left(study, request.trials), 0)} to run; study {request.study_name!r} in "
          f"{storage_label(request.storage)}", flush=True)
    return request
