"""Experiments: leave-one-domain-out runs resolved, planned and trained (in this process, in worker processes or
as sweep jobs). The reports they write (``results.md``, tables, the HTML report) are :mod:`vl2v.evaluation`'s.

* :mod:`~vl2v.experiment.setup`: what every run shares (algorithm specs, checks, data, teacher store, student)
  and the trainer of one run;
* :mod:`~vl2v.experiment.plan`: the runs of an experiment, in order;
* :mod:`~vl2v.experiment.run`: :func:`~vl2v.experiment.run.run_experiment` and the dry run;
* :mod:`~vl2v.experiment.parallel`: runs in worker processes (``--jobs N``);
* :mod:`~vl2v.experiment.sweep`: sweeps of whole experiments as resumable jobs (``vl2v sweep``).
"""
