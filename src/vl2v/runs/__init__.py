"""Run folders: the one owner of their layout, records, model selection, labels and grouping.

* :mod:`vl2v.runs.layout`: :class:`RunDir` (every file of a run), :class:`ExperimentDir`
  (the ``--out`` folder), :class:`SweepDir`/:class:`JobDir` (sweeps), :func:`find_runs`, a run's
  label and summary (:func:`run_label`, :func:`run_summary`);
* :mod:`vl2v.runs.records`: the record schema and :class:`RunRecorder` (``results.jsonl``);
* :mod:`vl2v.runs.selection`: training-domain validation and oracle selection;
* :mod:`vl2v.runs.summary`: runs grouped by dataset, the pick among hyperparameter draws;
* :mod:`vl2v.runs.model`: rebuild a run's trained model (imported on demand: it needs torch and the methods).

Layering: runs/ imports utils/ (and, in ``model``, methods/students/teachers), never
training/ or evaluation/, which both build on it.
"""

from vl2v.runs.layout import (
                              ExperimentDir,
                              JobDir,
                              RunConfig,
                              RunData,
                              RunDir,
                              RunFinal,
                              SweepDir,
                              find_runs,
                              run_name,
                              spec_options,
)
from vl2v.runs.records import RunRecorder
from vl2v.runs.selection import select_record, selection_value, summarize
from vl2v.runs.summary import (
                              DatasetGroup,
                              HParamPick,
                              RunEntry,
                              collect_runs,
                              group_by_dataset,
                              label,
                              run_label,
                              run_summary,
                              select_hparams,
)

__all__ = ["ExperimentDir", "JobDir", "SweepDir", "RunConfig", "RunData", "RunDir", "RunFinal", "find_runs", "run_name", "spec_options", "RunRecorder",
           "select_record", "selection_value", "summarize", "DatasetGroup", "RunEntry", "collect_runs",
           "group_by_dataset", "label", "run_label", "run_summary", "HParamPick", "select_hparams"]
