"""``vl2v data check`` through the CLI and :func:`check_dataset`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import build_image_folder
from vl2v.cli import main
from vl2v.data.check import check_dataset
from vl2v.data.registry import get_dataset


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["data", "check", *argv])
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def _table_row(out: str, label: str) -> list[str]:
    for line in out.splitlines():
        if line.split() and line.split()[0] == label:
            return line.split()[1:]
    raise AssertionError(f"no row {label!r} in:\n{out}")


def test_good_folder_exit_0_and_counts(image_folder, capsys):
    code, out = _run(capsys, "--data", str(image_folder))
    assert code == 0, out
    assert _table_row(out, "class") == ["art", "photo", "sketch", "total"]
    for cls in ("cat", "dog", "horse"):
        assert _table_row(out, cls) == ["6", "6", "6", "18"]
    assert _table_row(out, "total") == ["18", "18", "18", "54"]
    assert "3 domains, 3 classes, 54 readable images" in out
    assert "\nOK\n" in out


def test_broken_folder_names_every_problem(image_folder, capsys):
    (image_folder / "photo" / "dog" / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    shutil.rmtree(image_folder / "sketch" / "horse")  # class missing in one domain
    (image_folder / "watercolor").mkdir()  # empty domain
    code, out = _run(capsys, "--data", str(image_folder))
    assert code == 1
    assert "photo/dog/002.png" in out  # the corrupt file, with a reason
    assert "class 'horse' is missing in domain 'sketch'" in out
    assert "watercolor: empty domain" in out
    assert "FAILED: 2 problems" in out  # the unreadable file alone is a warning without --strict
    assert _table_row(out, "dog") == ["6", "5", "6", "0", "17"]


def test_corrupt_file_warns_and_strict_fails(image_folder, capsys):
    (image_folder / "art" / "cat" / "003.png").write_bytes(b"not an image at all")
    code, out = _run(capsys, "--data", str(image_folder))
    assert code == 0 and "skipped: art/cat/003.png: not an image" in out
    code, out = _run(capsys, "--data", str(image_folder), "--strict")
    assert code == 1 and "art/cat/003.png" in out


def test_empty_class_folder(image_folder, capsys):
    for f in (image_folder / "photo" / "cat").iterdir():
        f.unlink()
    (image_folder / "photo" / "cat" / "notes.txt").write_text("not an image")
    code, out = _run(capsys, "--data", str(image_folder))
    assert code == 1 and "photo/cat: empty class folder" in out


def test_missing_registered_dataset_says_how_to_get_it(tmp_path, capsys):
    code, out = _run(capsys, "PACS", "--root", str(tmp_path))
    assert code == 1
    assert f"vl2v data download PACS --root {tmp_path}" in out
    assert "does not exist" in out


def test_missing_custom_folder(tmp_path, capsys):
    code, out = _run(capsys, "--data", str(tmp_path / "nope"))
    assert code == 1 and "ROOT/domain/class/image" in out


def test_usage_errors_exit_2(tmp_path, capsys):
    assert _run(capsys)[0] == 2
    code, out = _run(capsys, "PACZ", "--root", str(tmp_path))
    assert code == 2 and "PACS" in out  # suggests the close match


def _pacs_like(root: Path, domains=None, per_class: int = 2) -> Path:
    spec = get_dataset("PACS")
    return build_image_folder(root / spec.subdir, domains=domains or spec.domains,
                              classes=spec.extra["classes"], per_class=per_class, size=8)


def test_registered_dataset_compared_with_spec(tmp_path, capsys):
    _pacs_like(tmp_path)
    code, out = _run(capsys, "PACS", "--root", str(tmp_path))
    assert code == 0, out
    assert _table_row(out, "expected") == ["2048", "2344", "1670", "3929", "9991"]
    assert "domain 'photo' has 14 images, expected 1670" in out  # counts off: a warning
    assert "OK (4 warnings)" in out


def test_spec_mismatches_are_errors(tmp_path, capsys):
    spec = get_dataset("PACS")
    _pacs_like(tmp_path, domains=("art_painting", "cartoon", "photo", "sketches"))
    code, out = _run(capsys, "PACS", "--root", str(tmp_path))
    assert code == 1
    assert "domain 'sketch' is missing" in out
    assert "unexpected domain folder 'sketches'" in out
    shutil.rmtree(tmp_path / spec.subdir)
    build_image_folder(tmp_path / spec.subdir, domains=spec.domains, classes=("dog", "cat"), per_class=1, size=8)
    code, out = _run(capsys, "PACS", "--root", str(tmp_path))
    assert code == 1
    assert "2 classes found, PACS has 7" in out
    assert "class 'elephant' of PACS is missing" in out and "unexpected class folder 'cat'" in out


def test_report_api(image_folder):
    report = check_dataset(data_dir=image_folder, progress=False)
    assert report.ok and report.scan is not None and len(report.scan.items) == 54
    assert report.size_bytes and report.size_bytes > 0
    shutil.rmtree(image_folder / "art" / "dog")
    report = check_dataset(data_dir=image_folder, progress=False)
    assert not report.ok and any("class 'dog' is missing in domain 'art'" in e for e in report.errors)


def test_long_problem_lists_are_truncated(image_folder):
    for i in range(60):
        (image_folder / "art" / "cat" / f"bad{i:02d}.jpg").write_bytes(b"x")
    text = check_dataset(data_dir=image_folder, progress=False).render()
    assert "... and 10 more" in text


@pytest.mark.parametrize("name", ["VLCS", "PACS", "OfficeHome", "TerraIncognita", "DomainNet"])
def test_check_points_to_download_for_each_domainbed_dataset(tmp_path, name):
    report = check_dataset(name, root=tmp_path, progress=False)
    assert not report.ok and f"vl2v data download {name} --root {tmp_path}" in report.render()
