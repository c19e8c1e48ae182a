"""``results.md``: the summary an experiment writes at the top of its output folder (its header, the data-stream
line, the tables), and the data-stream line the HTML report repeats (:func:`stream_statement`)."""

from __future__ import annotations

from typing import Any

from vl2v.config import ExperimentConfig
from vl2v.evaluation.tables import novel_markdown, selected_stages, table_sections


def stream_statement(cfg: ExperimentConfig, finals: list[dict]) -> str:
    """One line on what every algorithm trained on, checked from the runs' own stream digests: for each stage
    role (frozen-backbone warm-up, fine-tuning), per (target, seed), every algorithm's digest must be the same."""
    t = cfg.train
    kind = t.data_stream_kind
    what = (f"stored views, K={cfg.views} per image (view seed {cfg.view_seed}; K=0: the whole image, un-augmented)"
            if kind == "stored" else "a fresh augmentation per image and step (teacher queried online)")
    groups: dict[tuple, set[str]] = {}
    for f in finals:
        for st in f.get("data_stream", {}).get("stages", {}).values():
            groups.setdefault((f["target"], f["trial_seed"], st["role"]), set()).add(st["digest"])
    if finals and not groups:  # nothing was trained (zero-shot only): no data stream to speak of
        return ""
    roles = sorted({r for _, _, r in groups})
    same = {r: all(len(v) == 1 for (_, _, rr), v in groups.items() if rr == r) for r in roles}
    check = "; ".join(f"{'fine-tuning' if r == 'tune' else 'frozen-backbone'} stages: "
                      f"{'identical (image, view) sequences in every algorithm' if ok else 'DIFFERENT streams'}"
                      for r, ok in same.items())
    budget = (f"fine-tuning {t.schedule.steps} steps at lr {t.schedule.lr:g}"
              + (f", after the same {t.schedule.frozen_steps}-step head warm-up on the frozen backbone for every "
                 "fine-tuning algorithm" if t.schedule.head_warmup else ""))
    selection = "within the final stage" if t.select_stage == "final" else "over all stages"
    return (f"data stream (the same for every algorithm): {what}; {budget}; batch {t.batch_size} per source domain; "
            f"selection: training-domain validation {selection}" + (f". Checked: {check}" if check else ""))


def render_summary(tables, exp: Any, cfg: ExperimentConfig, wall: float, finals: list | None = None) -> str:
    """``results.md``: the tables of an experiment's runs (``tables``: :func:`~vl2v.evaluation.tables.build_tables`
    of ``finals``) under a header naming its data, teacher, student, seeds and data stream. ``exp``: the loaded
    experiment (:class:`vl2v.experiment.setup.Experiment`; its dataset name, teacher identity and domains)."""
    lines = [f"# {exp.dataset_name}: leave-one-domain-out, training-domain validation", "",
             f"teacher: `{exp.teacher_identity}`  ", f"student: `{cfg.student}`, {cfg.train.image_size}px; "
             f"seeds: {list(cfg.seeds)}; wall time {wall / 60:.1f} min"
             + (f"; hparams seed {cfg.hparams_seed} (random draw, see each run's config.json)" if cfg.hparams_seed else ""),
             "",
             ]
    stream = stream_statement(cfg, finals or [])
    if stream:
        lines += [stream, ""]
    for table, title in table_sections(tables, "Out-of-domain accuracy (%, target domain's 'in' split; column = held-out target)",
                                       "In-domain accuracy (%, source domains' 'out' splits)"):
        lines += [table.markdown(title), ""]
    if "oracle_ood" in tables:
        lines += [tables["oracle_ood"].markdown("Out-of-domain accuracy (%), test-domain validation (oracle, "
                                                "DomainBed's: each run's last checkpoint)"), ""]
    novel = novel_markdown(finals or [], exp.data.domains)
    if novel:
        lines += [novel, ""]
    stages = selected_stages(finals or [], exp.data.domains)
    if stages:
        lines += [f"**Checkpoint chosen by training-domain validation (stage@step; selection over "
                  f"{'the final stage' if cfg.train.select_stage == 'final' else 'all stages'})**", "", stages, ""]
    return "\n".join(lines)
