"""Evaluation: the reports of finished runs -- ``results.md``, tables (mean ± SE, selection), the HTML report,
figures and the teacher-quality curve. Running experiments is :mod:`vl2v.experiment`'s."""
