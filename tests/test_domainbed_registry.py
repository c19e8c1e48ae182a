"""The DomainBed entries of the dataset registry."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from vl2v.cli import main
from vl2v.data import domainbed as db
from vl2v.data.registry import get_dataset, list_datasets

# name: (domains as on disk, classes, total images after DomainBed's post-processing, folder, steps, ckpt freq)
EXPECTED = {
    "VLCS": (("Caltech101", "LabelMe", "SUN09", "VOC2007"), 5, 10_729, "VLCS", 5001, 300),
    "PACS": (("art_painting", "cartoon", "photo", "sketch"), 7, 9_991, "PACS", 5001, 300),
    "OfficeHome": (("Art", "Clipart", "Product", "Real World"), 65, 15_588, "office_home", 5001, 300),
    "TerraIncognita": (("location_100", "location_38", "location_43", "location_46"), 10, 24_788,
                       "terra_incognita", 5001, 300),
    "DomainNet": (("clipart", "infograph", "painting", "quickdraw", "real", "sketch"), 345, 586_575,
                  "domain_net", 15001, 1000),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_spec(name):
    spec = get_dataset(name)
    domains, n_classes, total, subdir, steps, ckpt = EXPECTED[name]
    assert spec.domains == domains
    assert list(spec.domains) == sorted(spec.domains)  # DomainBed's environment order
    assert spec.num_classes == n_classes
    assert spec.total_images == total
    assert set(spec.expected_images) == set(spec.domains)
    assert spec.subdir == subdir
    assert (spec.steps, spec.checkpoint_freq) == (steps, ckpt)
    assert len(spec.extra["domainbed_envs"]) == len(spec.domains)
    classes = spec.extra.get("classes")
    if classes is not None:
        assert len(classes) == len(set(classes)) == n_classes and list(classes) == sorted(classes)
    assert callable(spec.downloader) and spec.builder is None
    params = inspect.signature(spec.downloader).parameters
    assert list(params)[0] == "root" and "fetch" in params


def test_lookup_is_case_insensitive():
    assert get_dataset("terraincognita") is get_dataset("TerraIncognita")


def test_all_five_are_listed(capsys):
    names = {s.name for s in list_datasets()}
    assert set(EXPECTED) <= names
    assert main(["data", "list", "--root", "/nonexistent"]) == 0
    out = capsys.readouterr().out
    for name, (_, n_classes, total, *_rest) in EXPECTED.items():
        line = next(l for l in out.splitlines() if l.startswith(name + " "))
        assert f" {n_classes} " in line and str(total) in line and "vl2v data download" in line


def test_domainnet_sources_match_domains():
    assert tuple(db.DOMAINNET_SOURCES) == get_dataset("DomainNet").domains
    assert db.DOMAINBED_COMMIT in db.DOMAINNET_DUPLICATES.url and len(db.DOMAINBED_COMMIT) == 40
    assert db.DOMAINNET_DUPLICATES.sha256 is not None


def test_import_is_light():
    code = ("import sys, vl2v.data.domainbed; "
            "print(sorted(m for m in ('torch', 'torchvision', 'PIL', 'numpy', 'gdown') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
