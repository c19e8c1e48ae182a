"""Option classes outside config.py are on the one config layer (vl2v.config.config_dataclass + validated):
the build of the LiT teacher (BuildConfig), the embedding service (ServiceConfig) and the training
augmentation (AugConfig) keep their field names and defaults, and refuse out-of-range values with one
readable ConfigError."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from pydantic import ValidationError

from vl2v.config import validated
from vl2v.data.transforms import AugConfig
from vl2v.errors import ConfigError
from vl2v.teachers.lit_build import BuildConfig

DEFAULTS = {
    AugConfig: {"scale": (0.7, 1.0), "ratio": (3 / 4, 4 / 3), "flip_p": 0.5, "brightness": 0.3, "contrast": 0.3,
                "saturation": 0.3, "hue": 0.3, "grayscale_p": 0.1},
    BuildConfig: {"hidden": 1024, "epochs": 30, "batch_size": 512, "lr": 1e-3, "weight_decay": 1e-4,
                  "temperature": 0.05, "beta": 0.25, "beta_confident": 0.25, "beta_far": 0.75, "novelty_width": 0.2,
                  "novelty_quantile": 0.1, "novelty_k": 10, "k": 10, "label_template": "a photo of a {c}",
                  "views": ("orig", "line"), "val_fraction": 0.125, "seed": 0},
}


@pytest.mark.parametrize("cls", list(DEFAULTS), ids=lambda c: c.__name__)
def test_fields_and_defaults_are_kept(cls):
    assert dataclasses.asdict(cls()) == DEFAULTS[cls]
    assert hasattr(cls, "__pydantic_fields__")  # made by config_dataclass
    with pytest.raises(dataclasses.FrozenInstanceError):  # frozen, as before
        setattr(cls(), next(iter(DEFAULTS[cls])), None)


@pytest.mark.parametrize("cls,data,msg", [
    (BuildConfig, {"epochs": 0}, "epochs must be >= 1, got 0"),
    (BuildConfig, {"beta": 1.5}, "beta must be <= 1"),
    (BuildConfig, {"beta_far": -0.1}, "beta_far"),
    (BuildConfig, {"nope": 1}, "has no option 'nope'"),
    (AugConfig, {"flip_p": 2.0}, "flip_p must be <= 1"),
    (AugConfig, {"ratio": (0.0, 1.0)}, "ratio.0 must be > 0"),
])
def test_out_of_range_values_are_one_config_error(cls, data, msg):
    with pytest.raises(ConfigError, match=msg) as info:
        validated(cls, data)
    assert "\n" not in str(info.value)


def test_service_config_keeps_its_defaults_and_checks_its_ranges(tmp_path):
    pytest.importorskip("fastapi")
    from vl2v.serving.service import ServiceConfig

    cfg = ServiceConfig(str(tmp_path), max_batch_images=8)  # positional data folder, str or Path
    assert cfg.data_dir == tmp_path and cfg.keys_file == tmp_path / "keys.txt"
    assert cfg.limits() == {"max_batch_images": 8, "max_batch_texts": 256, "max_text_chars": 2000,
                            "max_request_bytes": 32 * 1024 * 1024, "max_image_pixels": 4096 * 4096,
                            "max_request_pixels": 64 * 1024 * 1024}
    assert (cfg.idempotency_ttl_s, cfg.body_timeout_s, cfg.inflight_wait_s) == (24 * 3600.0, 60.0, 600.0)
    assert cfg.decode_workers >= 1
    assert ServiceConfig(tmp_path, keys_file=tmp_path / "k.txt").keys_file == tmp_path / "k.txt"
    with pytest.raises(ValidationError):  # a ValueError, as before
        ServiceConfig(tmp_path, max_batch_texts=0)
    with pytest.raises(ConfigError, match="max_text_chars must be >= 1, got 0"):
        validated(ServiceConfig, {"data_dir": tmp_path, "max_text_chars": 0})


def test_vl2v_serve_names_the_flag_in_one_line(tmp_path):
    pytest.importorskip("fastapi")
    proc = subprocess.run([sys.executable, "-m", "vl2v", "serve", "--data-dir", str(tmp_path), "--max-batch", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["vl2v: error: vl2v serve: --max-batch must be >= 1, got 0"], proc.stderr
