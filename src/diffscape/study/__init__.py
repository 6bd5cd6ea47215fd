"""Studies: what the demo and sweeps run. A study (:mod:`.spec`) prepares its shared pieces once
(:mod:`.shared`: data, judges, the real-vs-real floor), then trains each of its runs and samples,
evaluates and judges each sampling (:mod:`.run` over the stages of :mod:`.stages`), in this
process or in worker processes (:mod:`.workers`), saying what it does as it goes
(:mod:`.narrate`); every stage's record is a typed file (:mod:`.results`). :mod:`.demo` is a
one-run study on the built-in landscapes.

Nothing is imported here: ``diffscape sweep --list`` and the report load without torch.
"""
