"""``lmaps-bench tune``: search an algorithm's hyperparameters on a task and a prior with Optuna, on validation
images that are never test images, resumably, with one worker or many on a shared study.

    lmaps-bench tune --task sr4 --algorithm lmaps_cpu --trials 12 --val-ids 0-3
    lmaps-bench tune --task sr4 --algorithm ib_daps --trials 12 --workers 2 --launcher joblib
    lmaps-bench tune --task sr4 --algorithm lmaps_cpu --storage journal:/shared/sr4.journal \\
                     --launcher submitit_slurm --workers 16 hydra.launcher.partition=gpu device=cuda

Each trial draws values from the algorithm's search space (``configs/tune/<algorithm>.yaml``, see
:mod:`lmaps_plugin.bench.tune.space`), and runs the ``lmaps`` app itself (:func:`lmaps_plugin.app.run.run`: the
problem's operator, the prior, the algorithm config with the trial's values) on the validation images
(``problem.data.split=val``), one image at a time, into ``trials/`` of the study folder. After each image it
reports the running mean of the metric; the pruner stops a trial that is clearly worse than the others were after
as many images. A sample that fails (diverges, NaN, or the algorithm raises at these values) prunes its trial,
with the reason in ``trials.csv``: a failing configuration is never chosen.
The trial's value is the mean metric over the validation images.

Layout (``--exp-dir``, default ``results/tune``)::

    <exp-dir>/<prior>/<task>/<algorithm>/     study.db (Optuna, SQLite), request.json, base_config.yaml,
                                              trials/ (an lmaps results folder per trial), trials.csv,
                                              history.png, importance.png, summary.json
    <exp-dir>/configs/algorithm/tuned/<prior>/<task>/<algorithm>.yaml     the tuned config

Use the tuned config with ``lmaps --config-dir <exp-dir>/configs algorithm=tuned/<prior>/<task>/<algorithm>`` or
InverseBench's ``python main.py --config-dir <exp-dir>/configs algorithm=tuned/...`` (``--install`` also copies
it into the package's ``configs/algorithm/tuned/``, where ``lmaps algorithm=tuned/...`` finds it without the flag).

Resuming: run the same command again. The study (any SQLAlchemy URL, or an Optuna journal file with
``--storage journal:PATH``) continues where it stopped: finished trials are never run again; a trial whose worker
died (killed, Ctrl-C) is marked failed and retried with the same values (its finished images are reused).
A worker holds an OS file lock in ``<study folder>/.workers/`` for its life, so a dead one is recognised at once
on any host that shares the folder. The budget (``--trials``) counts finished trials (complete or pruned): every
method gets the same budget, and the tuned config is the best of the first ``--trials`` of them.

Modules, each importing only those listed before it: :mod:`.space` (search spaces), :mod:`.request` (the
request and its resolution), :mod:`.study` (storage, leases, reclaiming), :mod:`.objective` (one trial),
:mod:`.worker` (running and launching workers), :mod:`.outputs` (tuned config, trials.csv, plots),
:mod:`.command` (the ``lmaps-bench tune`` options and :func:`~.command.tune`).
"""
