#!/usr/bin/env python
"""Speed of LMAPS as ratios measured within one run: see ``lmaps_plugin/bench/speed/main.py`` (``--help``)."""
from lmaps_plugin.bench.speed.main import main

raise SystemExit(main())
