"""The folder scanner: DomainBed's (torchvision ImageFolder's) order, and what it reports."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import build_image_folder, make_image
from vl2v.data.folder import FolderError, scan_folder
from vl2v.data.images import IMG_EXTENSIONS

# torchvision.datasets.folder.IMG_EXTENSIONS, which DomainBed's ImageFolder uses. Written
# out (not imported) because importing torchvision costs seconds on the 2-core CI.
TV_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def torchvision_order(root: Path, domain: str) -> list[tuple[str, str]]:
    """(relative path, class) per image in the order DomainBed's per-domain ImageFolder lists them.

    torchvision's ``make_dataset``: classes are the sorted sub-folder names; for each
    class, ``sorted(os.walk(class_dir, followlinks=True))`` and, in each folder, the
    sorted file names whose lower-cased name ends with an image extension. An
    independent re-statement of the rule, to check the scanner's hand-written walk.
    """
    droot = root / domain
    classes = sorted(e.name for e in os.scandir(droot) if e.is_dir())
    out = []
    for c in classes:
        for dirpath, _dirs, fnames in sorted(os.walk(os.path.join(droot, c), followlinks=True)):
            for f in sorted(fnames):
                if f.lower().endswith(TV_EXTENSIONS):
                    out.append((Path(dirpath, f).relative_to(root).as_posix(), c))
    return out


def our_order(scan, domain: str) -> list[tuple[str, str]]:
    d = scan.domains.index(domain)
    return [(r.path, scan.classes[r.label]) for r in scan.items if r.domain == d]


def test_extensions_match_torchvision():
    assert set(IMG_EXTENSIONS) == set(TV_EXTENSIONS)


def test_domainbed_order_on_nested_tree(tmp_path):
    root = build_image_folder(tmp_path / "ds", domains=("b_dom", "A_dom", "a dom"), classes=("zebra", "Ant", "ant"),
                              per_class=2, size=8)
    # nested folders and names that sort differently as strings than as paths
    for sub in ("sub", "sub b", "sub-a", "Sub"):
        (root / "b_dom" / "ant" / sub).mkdir()
        make_image(0, 0, 0, 8).save(root / "b_dom" / "ant" / sub / "x.png")
    make_image(0, 0, 0, 8).save(root / "b_dom" / "ant" / "sub" / "0.png")
    scan = scan_folder(root, verify=False)
    assert scan.domains == ["A_dom", "a dom", "b_dom"]
    assert scan.classes == ["Ant", "ant", "zebra"]
    for d in scan.domains:
        assert our_order(scan, d) == torchvision_order(root, d)
    assert not scan.issues


def test_non_image_files_are_ignored(image_folder):
    (image_folder / "art" / "cat" / "notes.txt").write_text("x")
    (image_folder / "art" / "cat" / ".DS_Store").write_bytes(b"\0")
    (image_folder / "art" / "cat" / "Thumbs.db").write_bytes(b"\0")
    (image_folder / "README.md").write_text("a dataset")
    (image_folder / ".hidden_domain").mkdir()
    scan = scan_folder(image_folder)
    assert len(scan.items) == 54 and not scan.issues
    assert scan.domains == ["art", "photo", "sketch"]


def test_unicode_and_spaces(tmp_path):
    root = build_image_folder(tmp_path / "données", domains=("Real World", "Ölgemälde"),
                              classes=("chat noir", "犬", "Émeu"), per_class=2, size=8)
    make_image(1, 1, 9, 8).save(root / "Ölgemälde" / "犬" / "ímage 01 (copy).PNG")
    scan = scan_folder(root, verify=True)
    assert scan.domains == ["Real World", "Ölgemälde"]
    assert scan.classes == sorted(["chat noir", "犬", "Émeu"])
    assert len(scan.items) == 13 and not scan.issues
    assert "Ölgemälde/犬/ímage 01 (copy).PNG" in {r.path for r in scan.items}
    for d in scan.domains:
        assert our_order(scan, d) == torchvision_order(root, d)
    assert all(scan.abspath(r).is_file() for r in scan.items)


def test_symlink_loop_is_reported_and_not_followed(image_folder):
    os.symlink("..", image_folder / "art" / "cat" / "loop")  # points back at art/
    os.symlink(".", image_folder / "photo" / "dog" / "self")
    scan = scan_folder(image_folder, verify=False)
    loops = [i for i in scan.issues if "symlink loop" in i.reason]
    assert {i.path for i in loops} >= {"photo/dog/self"}
    assert not scan.fatal_issues
    assert len(scan.items) < 200  # terminated, finite
    assert all("self" not in r.path for r in scan.items)


def test_broken_symlink_is_reported(image_folder):
    os.symlink("/nonexistent/file.png", image_folder / "art" / "cat" / "dangling.png")
    scan = scan_folder(image_folder, verify=False)
    assert any(i.path == "art/cat/dangling.png" and "broken symlink" in i.reason for i in scan.issues)
    assert len(scan.items) == 54


def test_corrupt_image_skipped_with_reason(image_folder):
    (image_folder / "sketch" / "dog" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    scan = scan_folder(image_folder, verify=True)
    assert len(scan.items) == 53
    [issue] = scan.issues
    assert issue.path == "sketch/dog/000.png" and not issue.fatal and issue.reason
    with pytest.raises(FolderError, match="sketch/dog/000.png"):
        scan_folder(image_folder, verify=True, strict=True)
    assert len(scan_folder(image_folder, verify=False).items) == 54  # not decoded: not noticed


def test_fatal_problems(image_folder):
    shutil.rmtree(image_folder / "photo" / "horse")
    (image_folder / "empty").mkdir()
    for f in (image_folder / "sketch" / "cat").iterdir():
        f.unlink()
    scan = scan_folder(image_folder, verify=False)
    fatal = {(i.path, i.reason.split(":")[0]) for i in scan.fatal_issues}
    assert ("empty", "empty domain") in fatal
    assert any(p == "photo/horse" and "missing" in r for p, r in fatal)
    assert ("sketch/cat", "empty class folder") in fatal
    with pytest.raises(FolderError, match="not usable"):
        scan.raise_if_fatal()


def test_images_outside_class_folders_are_reported(image_folder):
    make_image(0, 0, 0, 8).save(image_folder / "art" / "stray.png")
    scan = scan_folder(image_folder, verify=False)
    assert len(scan.items) == 54
    assert any(i.path == "art/stray.png" and not i.fatal for i in scan.issues)


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(FolderError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FolderError, match="not a folder"):
        scan_folder(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FolderError, match="no domain sub-folders"):
        scan_folder(tmp_path / "empty")


def test_unreadable_domain_is_fatal(image_folder, monkeypatch):
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == image_folder / "photo":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # chmod 000 would not stop root
    scan = scan_folder(image_folder, verify=False)
    assert any(i.path == "photo" and i.fatal and "Permission denied" in i.reason for i in scan.issues)
    assert {scan.domains[r.domain] for r in scan.items} == {"art", "sketch"}


def test_progress_wrapper_is_used(image_folder):
    seen = []

    def progress(items):
        seen.append(len(items))
        return items

    scan_folder(image_folder, verify=True, progress=progress)
    assert seen == [54]


# --------------------------------------------------------------------------- property test
_name = st.text(alphabet="abcAB _-.é9", min_size=1, max_size=6).filter(lambda s: s not in (".", "..")
                                                                          and not s.startswith("."))
_file = st.tuples(_name, st.sampled_from([".jpg", ".PNG", ".txt", ".jpeg", ""]))
_class_tree = st.fixed_dictionaries({
    "files": st.lists(_file, max_size=4),
    "sub": st.dictionaries(_name, st.lists(_file, max_size=3), max_size=2),
})
_tree = st.dictionaries(_name, st.dictionaries(_name, _class_tree, max_size=3), min_size=1, max_size=3)


def _write_tree(root: Path, tree) -> None:
    for d, classes in tree.items():
        (root / d).mkdir(parents=True, exist_ok=True)
        for c, content in classes.items():
            (root / d / c).mkdir(parents=True, exist_ok=True)
            for stem, ext in content["files"]:
                p = root / d / c / f"{stem}{ext}"
                if not p.exists():
                    p.write_bytes(b"")
            for sub, files in content["sub"].items():
                if (root / d / c / sub).exists() and not (root / d / c / sub).is_dir():
                    continue
                (root / d / c / sub).mkdir(exist_ok=True)
                for stem, ext in files:
                    p = root / d / c / sub / f"{stem}{ext}"
                    if not p.exists():
                        p.write_bytes(b"")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_tree)
def test_scan_matches_imagefolder_on_random_trees(tmp_path_factory, tree):
    root = tmp_path_factory.mktemp("tree")
    _write_tree(root, tree)
    scan = scan_folder(root, verify=False)
    assert scan.domains == sorted(tree)
    assert scan.classes == sorted({c for classes in tree.values() for c in classes})
    for d in scan.domains:
        if not any(os.scandir(root / d)):
            continue
        assert our_order(scan, d) == torchvision_order(root, d)
    # every image file is either listed or reported; no non-image file is listed
    listed = {r.path for r in scan.items}
    assert all(Path(p).suffix.lower() in IMG_EXTENSIONS for p in listed)
    fatal_paths = {i.path for i in scan.fatal_issues}
    for d in scan.domains:
        for c in scan.classes:
            n = sum(1 for r in scan.items if r.path.startswith(f"{d}/{c}/"))
            if n == 0:  # an empty or missing class is reported, or its whole domain is
                assert f"{d}/{c}" in fatal_paths or d in fatal_paths
