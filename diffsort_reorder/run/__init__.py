"""One training run: build it from a config (:mod:`.build`), step it (:mod:`.loop`), read it
(:mod:`.evaluate`), and what it needs around it (checks, runtime, schedules, distributed, log).
Nothing here imports :mod:`diffsort_reorder.study`: a study drives runs, never the reverse."""
