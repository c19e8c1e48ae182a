"""What one run asks of the teacher and what it pays (:class:`TeacherAccount`).

A run's teacher answers go through the teacher store, so each is paid once over every run that shares
the store. The account gets the answers the run needs before it trains (:meth:`TeacherAccount.fetch`),
can pay them ahead for a worker process (:meth:`TeacherAccount.pay`), lists them without asking anything
(:meth:`TeacherAccount.keys`, for the dry run) and writes the run's bill: what the run needed, what was
sent on its behalf and what the store already held (:meth:`TeacherAccount.bill`).
"""

from __future__ import annotations

from typing import Any

from vl2v.methods import AlgorithmInfo
from vl2v.teachers.store import view_id
from vl2v.training.distributed import main_first
from vl2v.training.stream import DataStream
from vl2v.training.task import RunTask


class TeacherAccount:
    """The teacher side of one run. ``prepaid``: the queries another process sent for this run ahead of it
    (:meth:`pay`), counted as this run's instead of the store reads that fetch them here."""

    def __init__(self, task: RunTask, info: AlgorithmInfo, stream: DataStream,
                 prepaid: dict[str, float] | None = None) -> None:
        self.task, self.info, self.stream, self.prepaid = task, info, stream, prepaid
        self.store = task.res.store
        self.stats0: dict[str, float] = {}  # the store's counters the records' `queries` count from
        self.bill0: dict[str, float] = {}  # the store's counters the teacher bill counts from

    def _cached_training_views(self) -> bool:
        """The algorithm learns from the teacher's embedding of every stored training view."""
        return self.info.uses_teacher_images and self.info.needs_training and self.task.cfg.teacher_mode == "cached"

    def open_bill(self) -> None:
        """The run's bill counts from here (before its prompt texts are paid)."""
        self.bill0 = self.store.stats.as_dict() if self.store is not None else {}

    def fetch(self) -> None:
        """The teacher embeddings this run needs, through the store (paid once): every training view when the
        algorithm learns from them with a cached teacher, the evaluation views when the teacher itself predicts."""
        task, res = self.task, self.task.res
        if self._cached_training_views():
            self.stream.targets = res.teacher_targets(task.train_indices)  # every training view, paid once
        if not self.info.has_student:
            res.teacher_center(task.eval_indices())
            if task.data.novel:  # the teacher's zero-shot on the held-out classes' images too
                res.teacher_center(task.novel_target_items())
        if task.data.novel and self.store is not None and self.info.needs_teacher:
            task.novel_classifier()  # every class name's prompts, for the novel-class scores

    def start(self) -> None:
        """Start the records' query counters, then get the teacher's answers the run needs (paid here, or read
        from the store when another process paid them ahead: ``prepaid``)."""
        store = self.store
        self.stats0 = store.stats.as_dict() if store else {}
        with main_first():  # teacher queries: rank 0 asks and stores, the other ranks read
            self.fetch()
        if store is not None and self.prepaid is not None:
            self.stats0 = {k: v - self.prepaid.get(k, 0) for k, v in store.stats.as_dict().items()}

    def pay(self, build_context) -> dict[str, float]:
        """Ask the teacher now for everything the run will ask it (prompt texts through ``build_context()``,
        training views, evaluation views) and return what that cost."""
        store = self.store
        t0 = store.stats.text_queries
        build_context()  # prompt texts: in the run's bill, not in its store counters (queries)
        before = store.stats.as_dict()
        self.fetch()
        paid = {k: v - before.get(k, 0) for k, v in store.stats.as_dict().items()}
        paid["prompt_text_queries"] = before["text_queries"] - t0
        return paid

    def queries(self) -> dict[str, float]:
        """The store's counters since :meth:`start` (a record's ``queries``)."""
        if self.store is None:
            return {}
        now = self.store.stats.as_dict()
        return {k: now[k] - self.stats0.get(k, 0) for k in now}

    def keys(self) -> tuple[set[tuple[str, str]], set[str]]:
        """The distinct teacher answers this run uses: ``(content hash, view id)`` image keys and prompt texts
        (none for an algorithm that does not use the teacher). With an online teacher the training views are
        drawn fresh every step and are not known ahead: only the evaluation views and texts are listed."""
        task = self.task
        if self.store is None or not self.info.needs_teacher:
            return set(), set()
        texts = set(task.prompts())
        if task.data.novel:  # the held-out classes' names are embedded for the novel-class scores
            texts |= set(task.all_prompts())
        keys: set[tuple[str, str]] = set()
        hashes = task.data.bank.hashes
        if self._cached_training_views():
            keys.update((hashes[i], view_id(p)) for i in task.train_indices for p in task.res.view_list(i))
        if not self.info.has_student:
            keys.update((hashes[i], view_id(None)) for i in task.eval_indices())
            if task.data.novel:
                keys.update((hashes[i], view_id(None)) for i in task.novel_target_items())
        return keys, texts

    def need(self) -> dict[str, int]:
        """What this run would pay alone, with an empty store, whatever other runs paid before it."""
        keys, texts = self.keys()
        return {"image": len(keys), "text": len(texts)}

    def bill(self) -> dict[str, Any]:
        """What the run needed from the teacher (:meth:`need`) and what was paid for it: the queries sent on the
        run's behalf here, plus those another process sent for it ahead (``prepaid``); ``store_hits``: needed
        answers that were already in the store. With an online teacher every step's fresh views are new
        queries, so the need is what was sent. In money too, for a teacher sold per query."""
        now = self.store.stats.as_dict()
        pre, b0 = self.prepaid or {}, self.bill0
        paid = {"image": int(now["image_queries"] - b0.get("image_queries", 0) + pre.get("image_queries", 0)),
                "text": int(now["text_queries"] - b0.get("text_queries", 0) + pre.get("text_queries", 0)
                            + pre.get("prompt_text_queries", 0))}
        need = self.need()
        online = self.info.uses_teacher_images and self.task.cfg.teacher_mode == "online" and self.info.needs_teacher
        if online:
            need["image"] = paid["image"]
        n = max(1, len(self.task.train_indices))
        bill = {"needed": need, "paid": paid, "store_hits": {k: max(0, need[k] - paid[k]) for k in need},
                "needed_image_per_train_image": round(need["image"] / n, 4),
                "paid_image_per_train_image": round(paid["image"] / n, 4), "online": online}
        price = self.store.teacher.price()
        if price:  # a teacher sold per query: the same bill in money, at the price it states
            bill["price"] = price
            bill["cost"] = {part: round(bill[part]["image"] * price["image"] + bill[part]["text"] * price["text"], 6)
                            for part in ("needed", "paid")}
        return bill
