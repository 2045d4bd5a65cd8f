"""The ``lmaps`` command (:mod:`.main`): its configuration (:mod:`.compose`, checked by :mod:`.schema`), what a run
is built from (:mod:`.build`), one sample (:mod:`.sample`), a run over a locked results folder (:mod:`.run`,
:mod:`.folder`, :mod:`.results`), its table and figures (:mod:`.report`, :mod:`.figures`), and
``lmaps-calibrate`` (:mod:`.calibrate`)."""
