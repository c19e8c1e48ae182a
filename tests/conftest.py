"""Shared test fixtures: tiny multi-domain image folders generated on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Tests use tiny models, for which one thread is faster than two fighting over a small core count.
torch.set_num_threads(1)
# `vl2v train`/`compare` run in-process here (--jobs 1, also in the CLI subprocesses tests start: they inherit
# this); tests/test_parallel.py covers --jobs N explicitly.
os.environ.setdefault("VL2V_JOBS", "1")

# Colour per class and drawing style per domain, so a small model can learn the
# task and domains look different: enough signal for end-to-end tests.
_CLASS_COLOURS = [(220, 40, 40), (40, 200, 60), (40, 80, 230), (230, 200, 30), (160, 40, 200), (30, 200, 200)]


def make_image(cls: int, domain: int, idx: int, size: int = 32) -> Image.Image:
    rng = np.random.RandomState(1000 * domain + 37 * cls + idx)
    base = np.full((size, size, 3), 255 if domain % 2 == 0 else 30, dtype=np.uint8)
    colour = np.array(_CLASS_COLOURS[cls % len(_CLASS_COLOURS)], dtype=np.int16)
    jitter = rng.randint(-25, 26, size=3)
    c = np.clip(colour + jitter, 0, 255).astype(np.uint8)
    lo, hi = size // 4 + rng.randint(-2, 3), 3 * size // 4 + rng.randint(-2, 3)
    if domain % 3 == 0:
        base[lo:hi, lo:hi] = c  # filled square
    elif domain % 3 == 1:
        base[lo:hi, lo:lo + 3] = c  # outline
        base[lo:hi, hi - 3:hi] = c
        base[lo:lo + 3, lo:hi] = c
        base[hi - 3:hi, lo:hi] = c
    else:
        yy, xx = np.mgrid[:size, :size]
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
        base[mask] = c  # disc
    noise = rng.randint(0, 20, size=base.shape).astype(np.uint8)
    return Image.fromarray(np.clip(base.astype(np.int16) + noise - 10, 0, 255).astype(np.uint8))


def build_image_folder(root: Path, domains=("art", "photo", "sketch"), classes=("cat", "dog", "horse"),
                       per_class: int = 6, size: int = 32, fmt: str = "png") -> Path:
    """Write ``root/domain/class/NNN.fmt`` images and return ``root``."""
    for di, d in enumerate(domains):
        for ci, c in enumerate(classes):
            folder = root / d / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                make_image(ci, di, i, size).save(folder / f"{i:03d}.{fmt}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A tiny valid dataset: 3 domains x 3 classes x 6 images of 32x32 px."""
    return build_image_folder(tmp_path / "tiny")


# --------------------------------------------------------------------------- a tiny teacher
import hashlib  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from vl2v.teachers.base import Teacher  # noqa: E402
from vl2v.teachers.registry import TEACHERS, register_teacher  # noqa: E402


class TinyEncoder(nn.Module):
    """Fixed random conv features plus mean colour (the tiny datasets' class signal) -> dim."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8 + 3, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x - 0.5)).mean(dim=(2, 3))
        return self.fc(torch.cat([h, 4 * (x.mean(dim=(2, 3)) - 0.5)], dim=1))


class TinyTeacher(Teacher):
    """A deterministic, fast white-box teacher for tests: a small conv net and hashed word vectors."""

    backend = "tiny-test"
    white_box = True

    def __init__(self, dim: int = 16, size: int = 24) -> None:
        self._dim, self._size = dim, size
        self.encoder = TinyEncoder(dim).eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.image_calls = 0

    @property
    def embed_dim(self) -> int:
        return self._dim

    @property
    def image_size(self) -> int:
        return self._size

    def identity(self) -> str:
        return f"tiny-test(dim={self._dim},size={self._size})"

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        return F.normalize(self.encoder(images.float()), dim=-1)

    def embed_texts(self, texts) -> torch.Tensor:
        out = []
        for t in texts:
            seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
            out.append(torch.randn(self._dim, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(out), dim=-1)

    def image_encoder(self) -> nn.Module:
        return self.encoder


if "tiny-test" not in TEACHERS:
    register_teacher("tiny-test", white_box=True, summary="test-only tiny teacher")(
        lambda spec=None, **opts: TinyTeacher(**{k: int(v) for k, v in opts.items()}))


@pytest.fixture
def tiny_teacher() -> TinyTeacher:
    return TinyTeacher()


# --------------------------------------------------------------------------- test lanes
# Markers are applied here, from one table, rather than in each test file: the lanes are a property of
# the suite (measured with `pytest --durations=0 tests/` on the 2-core CPU machine: 346 tests, 9.8 min),
# and test files change often. Lanes (registered in pyproject.toml, --strict-markers):
#   slow     a test (with the module fixture it alone uses) that takes more than ~3 s;
#   e2e      a whole run: training, the CLI, torchrun, a sweep, a live service, export of trained runs;
#   browser  headless Chromium (marked in tests/test_html_report.py itself).
# The fast lane is `pytest -m "not slow and not e2e and not browser"` (about 1.5 min here).
# A key is a module ("test_x.py": every test in it) or a test ("test_x.py::test_y": every parametrisation;
# "test_x.py::test_y[p]": that one). Tests sharing an expensive module fixture go together (a whole
# module), or the fast lane would pay that fixture's setup anyway. Seconds measured are in the comments.
SLOW, E2E = ("slow",), ("e2e",)
SLOW_E2E = ("slow", "e2e")
LANES: dict[str, tuple[str, ...]] = {
    "test_plan.py::test_hyperparameters_are_validated_once_per_algorithm_not_per_run": E2E,  # 3 tiny runs, ~2 s
    # two tiny comparisons (4 and 8 fine-tuning steps) and `vl2v budget` on them, ~20 s
    "test_budget.py::test_a_long_run_starts_as_the_short_run_and_the_budget_table_reads_it": SLOW_E2E,
    # a tiny SD run at another input size than its teacher's, loaded and timed by benchmarks/inference.py, ~6 s
    "test_rise_sd.py::test_a_loaded_sd_run_is_the_model_trained_at_its_own_image_size": E2E,
    "test_teacher_cos.py": SLOW_E2E,  # two tiny comparisons (6 and 1 algorithms), ~20 s
    "test_distributed.py": SLOW_E2E,  # torchrun, 2 processes: 4 tests, 81 s in all
    "test_data_stream.py": SLOW_E2E,  # tiny comparisons of 5, 2 and 2 algorithms: 9.6 s in all
    "test_sweep.py::test_interrupted_local_sweep_resumes_and_skips_finished_jobs": SLOW_E2E,  # 65 s
    "test_sweep.py::test_submitit_launcher_runs_jobs": SLOW_E2E,  # 23 s
    "test_resume.py::test_sigkill_and_resume_gives_identical_results": SLOW_E2E,  # 83 s
    "test_html_report.py": SLOW_E2E,  # module fixture runs a 16-run experiment (19 s); CLI train + report
    "test_export.py": SLOW_E2E,  # module fixture trains 4 algorithms and exports ONNX (42 s)
    "test_predict.py": SLOW_E2E,  # shares test_export's trained runs and ONNX exports
    "test_eval_command.py": SLOW_E2E,  # `vl2v eval`: shares test_export's trained runs and ONNX exports
    "test_predict_classes.py": SLOW_E2E,  # `predict --classes`: module fixture trains 5 tiny runs (~4 s)
    # a tiny ConSE adip run exported with its text tower; the docs example in a fresh venv (pip install)
    "test_open_vocab_export.py": SLOW_E2E,
    "test_training_e2e.py": E2E,  # whole-pipeline training and CLI runs
    "test_vendor_teachers.py::test_dry_run_predicts_a_vendor_runs_queries_exactly_and_its_cost_to_the_cent": SLOW_E2E,
    "test_dry_run.py": SLOW_E2E,  # a dry run, then the 12-run comparison it predicts (~24 s)
    "test_out_dir_guard.py::test_other_settings_in_a_used_folder_are_refused": SLOW_E2E,  # a tiny train each, ~3 s
    "test_out_dir_guard.py::test_a_resolved_value_differing_per_run_is_refused": E2E,
    "test_out_dir_guard.py::test_same_settings_reuse_the_finished_runs": E2E,
    "test_out_dir_guard.py::test_overwrite_starts_over": E2E,
    "test_out_dir_guard.py::test_resume_takes_only_speed_flags": E2E,
    "test_out_dir_guard.py::test_the_experiment_records_the_library_versions_its_numbers_depend_on": E2E,
    "test_out_dir_guard.py::test_an_api_key_never_reaches_a_record": E2E,
    "test_training_e2e.py::test_every_algorithm_trains_and_writes_domainbed_records": SLOW,  # 21 s
    "test_training_e2e.py::test_cli_train_and_report": SLOW,  # 12 s
    "test_training_e2e.py::test_distill_starts_from_best_align_checkpoint": SLOW,  # 3.4 s
    "test_service.py::test_service_writes_nothing_outside_its_data_dir": SLOW_E2E,  # `vl2v serve` process, 14 s
    "test_service.py::test_schemathesis_finds_no_server_errors": SLOW,  # 13 s
    "test_service.py::test_metering_exact_under_32_concurrent_clients": SLOW,  # 3.1 s
    "test_hf_teachers.py::test_cli_train_adip_end_to_end": SLOW_E2E,  # 7 families, 1.7-5 s each (21 s)
    "test_teachers.py::test_conse_is_a_convex_combination_of_class_name_embeddings": SLOW,  # ConSE fixture 8.5 s
    "test_teachers.py::test_conse_text_side_and_zero_shot_prompt_ensemble": SLOW,  # same fixture
    # two ConSE builds and two EfficientNet-Lite2 ONNX exports: 55 s in all
    "test_conse_runtime.py::test_torch_identity_is_unchanged": SLOW,  # module fixture: torch + onnx teachers, 33 s
    "test_conse_runtime.py::test_onnx_identity_is_the_torch_one_plus_the_runtime": SLOW,  # same fixture
    "test_conse_runtime.py::test_onnx_embeddings_match_torch": SLOW,  # same fixture
    "test_conse_runtime.py::test_onnx_cache_is_reused_then_rebuilt_when_corrupted": SLOW,  # re-export, 17 s
    "test_conse_runtime.py::test_auto_runtime_is_onnx_on_the_cpu_and_torch_elsewhere": SLOW,  # same fixture, 3 teachers
    "test_remote.py::test_conse_round_trip": SLOW_E2E,  # ConSE served over HTTP, 8.1 s
    "test_remote.py::test_persistent_failure_gives_up_with_a_clear_error": SLOW,  # retry back-off, 3.7 s
    "test_service_quotas.py::test_load_benchmark_quick_quota_mode": SLOW_E2E,  # service_load.py --quick, ~9 s
    "test_store.py::test_sigkill_mid_write_leaves_a_usable_store": SLOW,  # 8.3 s
    "test_precompute.py::test_precompute_then_training_queries_nothing": SLOW_E2E,  # 7.5 s
    "test_disk_faults.py::test_disk_full_mid_run_keeps_last_good_checkpoint": SLOW_E2E,  # 4.2 s
    "test_teacher_catalog.py::test_cli_train_with_a_coca_tower_end_to_end": SLOW_E2E,  # 4.2 s
    "test_students.py::test_student_contract[vit_base_patch16_224]": SLOW,  # 4.1 s
    "test_messy_data.py::test_training_on_a_messy_folder_records_every_skip": SLOW_E2E,  # 3.7 s
    "test_loader.py::test_same_seed_same_records_whatever_the_workers_and_data_mode": SLOW_E2E,  # 2 runs, ~10 s
    "test_loader.py::test_checkpoint_taken_while_workers_render_ahead_resumes_exactly": SLOW_E2E,  # 4 runs, ~20 s
    "test_loader.py::test_cached_frozen_prefix_gives_the_same_records": SLOW_E2E,  # 2 runs, ~15 s
    "test_precision.py": SLOW_E2E,  # short training runs; torch.compile on the CPU
    "test_selection.py::test_adip_with_final_stage_selection_selects_a_distill_checkpoint": E2E,
    "test_algorithm_contract.py::test_student_contract[vit_base_patch16_224]": SLOW,  # random ViT-B, ~4 s
    "test_lanes.py::test_every_lane_key_names_a_collected_test": SLOW,  # collects the suite in a subprocess, 13-23 s
    "test_benchmark_pipeline.py": SLOW_E2E,  # benchmarks/pipeline.py --quick: ~20 training runs + 5 processes, ~60 s
    # two tiny kd runs (hparams seeds 0 and 1) and the report's pick, 2.6-3.9 s
    "test_hparam_search.py::test_runs_of_two_hparams_seeds_record_their_draws_and_the_report_picks_one": SLOW_E2E,
    "test_paper_profile.py::test_paper_profile_runs_end_to_end": SLOW_E2E,  # --profile paper, 8 steps, ~7 s
    "test_prompts.py::test_classnames_file_reaches_the_run_config": E2E,  # a zero-shot CLI run, ~2 s
    # LiT teacher: each fixture build (tower + MiniLM load, 30 icons rendered, 55 tower passes) takes ~10 s
    "test_lit_teacher.py::test_build_writes_weights_and_manifest": SLOW,  # the module's fixture build
    "test_lit_teacher.py::test_built_teacher_loads_with_weights_sha_in_identity": SLOW,  # same fixture + a load
    "test_lit_teacher.py::test_build_is_deterministic": SLOW,  # a second build
    "test_lit_teacher.py::test_build_aborts_on_benchmark_overlap": SLOW,  # a build up to the check
    "test_lit_clean.py::test_no_benchmark_check_flag_builds_and_says_so": SLOW,  # a fixture build, ~20 s
    "test_lit_clean.py::test_near_duplicates_of_training_icons_are_dropped_and_listed": SLOW,  # cached features, ~6 s
    "test_teacher_contract.py::test_teacher_contract[lit]": SLOW,  # builds the fixture LiT teacher
    "test_teacher_contract.py::test_identity_is_stable_across_builds[lit]": SLOW,  # loads it again
    # a mocked vendor API (respx): two tiny CLI adip runs, the second served wholly by the store (~8 s)
    "test_vendor_teachers.py::test_cli_train_then_an_identical_run_makes_zero_http_calls": SLOW_E2E,
}


def _lane_keys(item: pytest.Item) -> list[str]:
    """The table keys that can name ``item``: its module, its test (any parametrisation), itself."""
    module = Path(str(item.fspath)).name
    rest = item.nodeid.split("::", 1)[1] if "::" in item.nodeid else ""
    return [module, f"{module}::{rest.split('[', 1)[0]}", f"{module}::{rest}"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marks = {m for key in _lane_keys(item) for m in LANES.get(key, ())}
        for m in sorted(marks):
            item.add_marker(m)
