"""Speed of LMAPS as ratios measured within one run: ``python scripts/bench_speed.py`` (see :mod:`.main`).

Modules: :mod:`.timing` (plans, interleaved rounds, paired ratios), :mod:`.table` (printing),
:mod:`.problems` (priors, operators, configs, InverseBench's peers), :mod:`.cases` and :mod:`.overhead`
(section a), :mod:`.sections` (sections a', b, c, d, f), :mod:`.memory` (section e), :mod:`.main` (the command).
"""
