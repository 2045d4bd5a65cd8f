"""The run-time app: the ``lmaps`` command (:mod:`.cli`) and ``lmaps-bench`` (:mod:`.benchmark`), with their
result folders (:mod:`.results`), metrics, figures and the leaderboard format."""
