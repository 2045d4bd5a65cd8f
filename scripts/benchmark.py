#!/usr/bin/env python
"""Same as the ``lmaps-bench`` console script (lmaps_plugin/bench/main.py): sweep tasks × algorithms × seeds with
Hydra multirun, sharded by sample-id ranges, then aggregate into table.md, table.csv and leaderboard.json.

    python scripts/benchmark.py run --tasks inpaint_random,sr4 --algorithms lmaps_cpu,ib_daps --seeds 0,1 \\
        --num-images 8 --shard-size 4 --jobs 2 --exp-dir results/bench
    python scripts/benchmark.py aggregate --exp-dir results/bench
"""
import sys

from lmaps_plugin.bench.main import main

if __name__ == "__main__":
    sys.exit(main())
