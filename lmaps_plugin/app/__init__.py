"""The run-time app: the ``lmaps`` command (:mod:`.cli`) and ``lmaps-bench`` (:mod:`.benchmark`), with their
configuration schema (:mod:`.schema`), result folders (:mod:`.results`, locked by :mod:`.folder`), metrics, figures
and the leaderboard format."""
