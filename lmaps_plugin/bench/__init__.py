"""The lmaps-bench command and its benchmarks."""
