"""DomainBed downloaders end to end on small local archives with the real internal layouts.

The network is replaced by a ``fetch`` that copies fixture files, keyed by the
exact URLs DomainBed uses, so these tests also pin the sources.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from vl2v.cli import main
from vl2v.data import domainbed as db
from vl2v.data import download as dl
from vl2v.data.download import DownloadError
from vl2v.data.folder import scan_folder
from vl2v.data.registry import get_dataset
from vl2v.utils.hashing import file_digest


# --------------------------------------------------------------------------- fixture archives
def _img_bytes(fmt: str = "JPEG", colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format=fmt)
    return buf.getvalue()


JPG = _img_bytes()
PNG = _img_bytes("PNG", (10, 200, 10))


def _zip(path: Path, files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for d in dirs:
            zf.writestr(d.rstrip("/") + "/", b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _layout(top: str, domains, classes, per_class, ext=lambda d: "jpg") -> dict[str, bytes]:
    files = {}
    for di, d in enumerate(domains):
        for c in classes:
            for i in range(per_class(di)):
                e = ext(d)
                files[f"{top}/{d}/{c}/pic_{i:03d}.{e}"] = PNG if e == "png" else JPG
    return files


def make_vlcs(tmp: Path) -> dict[str, Path]:
    spec = get_dataset("VLCS")
    files = _layout("VLCS", spec.domains, spec.extra["classes"], lambda di: di + 1)
    files["VLCS/README.txt"] = b"not an image"
    return {db.VLCS_SOURCE.url: _tar(tmp / "VLCS.tar.gz", files)}


def make_pacs(tmp: Path, drop_domain: str | None = None) -> dict[str, Path]:
    spec = get_dataset("PACS")
    domains = [d for d in spec.domains if d != drop_domain]
    files = _layout("kfold", domains, spec.extra["classes"], lambda di: 2,
                    ext=lambda d: "png" if d == "sketch" else "jpg")
    files["__MACOSX/kfold/._junk"] = b"\x00\x05junk"
    return {db.PACS_SOURCE.url: _zip(tmp / "PACS.zip", files, dirs=("kfold/",))}


def make_office_home(tmp: Path) -> dict[str, Path]:
    spec = get_dataset("OfficeHome")
    files = _layout("OfficeHomeDataset_10072016", spec.domains, spec.extra["classes"], lambda di: 1)
    files["OfficeHomeDataset_10072016/ImageInfo.csv"] = b"a,b\n"
    files["OfficeHomeDataset_10072016/imagelist.txt"] = b"x\n"
    return {db.OFFICEHOME_SOURCE.url: _zip(tmp / "office_home.zip", files)}


def terra_annotations() -> tuple[list[dict], dict[str, list[str]]]:
    """Fake ECCV'18 annotation files and the folders each image must end up in."""
    cats = [{"id": i, "name": n} for i, n in enumerate(db.TERRA_CATEGORIES)]
    cats += [{"id": 50, "name": "deer"}, {"id": 51, "name": "car"}]
    images, anns, expected = [], [], {}
    k = 0

    def add(location, cat_ids, fname=None):
        nonlocal k
        k += 1
        fname = fname or f"{k:08x}-0000-11e8-a6a3-ec086b02610b.jpg"
        images.append({"id": f"img{k}", "file_name": fname, "location": location})
        for c in cat_ids:
            anns.append({"id": f"ann{len(anns)}", "image_id": f"img{k}", "category_id": c})
        return fname

    for loc in (38, "46", 100, "43"):  # both int and str locations occur in the wild
        for ci in range(len(db.TERRA_CATEGORIES)):
            f = add(loc, [ci])
            expected[f] = [f"location_{loc}/{db.TERRA_CATEGORIES[ci]}/{f}"]
    f = add(38, [0, 4])  # two categories: copied into both folders
    expected[f] = [f"location_38/bird/{f}", f"location_38/dog/{f}"]
    f = add(46, [1, 1])  # the same category twice: one copy
    expected[f] = [f"location_46/bobcat/{f}"]
    f = add(100, [50, 3])  # an excluded category next to an included one
    expected[f] = [f"location_100/coyote/{f}"]
    expected[add(43, [51])] = []  # only an excluded category
    expected[add(7, [0])] = []  # a location DomainBed does not use
    expected[add("0", [2])] = []
    add(38, [])  # no annotation at all
    # Split like the five ECCV'18 files; DomainBed concatenates them.
    halves = [
        {"images": images[::2], "annotations": anns, "categories": cats},
        {"images": images[1::2], "annotations": [], "categories": cats},
    ]
    return halves, expected


def make_terra(tmp: Path, drop_image: bool = False) -> dict[str, Path]:
    halves, expected = terra_annotations()
    names = [im["file_name"] for h in halves for im in h["images"]]
    if drop_image:
        names = [n for n in names if expected.get(n)][1:] + [n for n in names if not expected.get(n)]
    img_files = {f"{db.TERRA_IMAGES_DIR}/{n}": JPG for n in names}
    ann_files = {
        "eccv_18_annotation_files/train_annotations.json": json.dumps(halves[0]).encode(),
        "eccv_18_annotation_files/cis_val_annotations.json": json.dumps(halves[1]).encode(),
    }
    return {
        db.TERRA_SOURCES["images"].url: _tar(tmp / "eccv_18_all_images_sm.tar.gz", img_files),
        db.TERRA_SOURCES["annotations"].url: _tar(tmp / "eccv_18_annotations.tar.gz", ann_files),
    }


DN_CLASSES = ("The_Eiffel_Tower", "animal_migration", "zigzag")


def make_domain_net(tmp: Path) -> tuple[dict[str, Path], dict[str, int]]:
    urls: dict[str, Path] = {}
    expected: dict[str, int] = {}
    dup_lines = []
    for di, d in enumerate(db.DOMAINNET_SOURCES):
        files = {}
        for ci, c in enumerate(DN_CLASSES):
            for i in range(3):
                files[f"{d}/{c}/{d}_{ci:03d}_{i:06d}.jpg"] = JPG
        # one listed duplicate per domain except quickdraw (as in DomainBed's list)
        if d != "quickdraw":
            dup_lines.append(f"{d}/{DN_CLASSES[1]}/{d}_001_000000.jpg")
        expected[d] = 9 - (d != "quickdraw")
        urls[db.DOMAINNET_SOURCES[d].url] = _zip(tmp / f"{d}.zip", files)
    dup_lines.append("real/zigzag/not_in_the_zip.jpg")  # DomainBed ignores missing files
    dup = tmp / "domain_net_duplicates.txt"
    dup.write_text("\n".join(dup_lines) + "\n")
    urls[db.DOMAINNET_DUPLICATES.url] = dup
    return urls, expected


class LocalFetch:
    """Stands in for the network: copies the fixture registered for each URL."""

    def __init__(self, mapping: dict[str, Path]):
        self.mapping = mapping
        self.calls: list[str] = []

    def __call__(self, url: str, dest: Path) -> None:
        self.calls.append(url)
        if url not in self.mapping:
            raise DownloadError(f"no fixture for {url}")
        shutil.copyfile(self.mapping[url], dest)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _domainnet_spec(expected):
    return dataclasses.replace(get_dataset("DomainNet"), num_classes=len(DN_CLASSES), expected_images=expected)


def _dn_sha(path: Path) -> str:
    return file_digest(path)


# --------------------------------------------------------------------------- per dataset
@pytest.mark.parametrize("name,maker,n_images", [
    ("VLCS", make_vlcs, 5 * (1 + 2 + 3 + 4)),
    ("PACS", make_pacs, 4 * 7 * 2),
    ("OfficeHome", make_office_home, 4 * 65),
])
def test_single_archive_downloaders(tmp_path, name, maker, n_images):
    spec = get_dataset(name)
    fetch = LocalFetch(maker(tmp_path / "src"))
    root = tmp_path / "data"
    folder = spec.downloader(root, fetch=fetch, progress=False)
    assert folder == root / spec.subdir
    scan = scan_folder(folder, verify=True)
    assert scan.domains == list(spec.domains)
    assert scan.classes == sorted(spec.extra["classes"])
    assert len(scan.items) == n_images and not scan.issues
    marker = dl.read_marker(folder)
    assert marker["dataset"] == name and sum(marker["images"].values()) == n_images
    # counts differ from the real dataset: recorded as warnings, not failures
    assert any("expected" in w for w in marker["warnings"])
    # staging, lock holders and archives are cleaned up; nothing else is left in root
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == [spec.subdir]
    assert fetch.calls == [s.url for s in ([db.VLCS_SOURCE] if name == "VLCS" else
                                           [db.PACS_SOURCE] if name == "PACS" else [db.OFFICEHOME_SOURCE])]


@pytest.fixture(autouse=True)
def _src_dir(tmp_path):
    (tmp_path / "src").mkdir()


def test_office_home_keeps_real_world_with_space(tmp_path):
    folder = db.download_office_home(tmp_path / "d", fetch=LocalFetch(make_office_home(tmp_path / "src")),
                                     progress=False)
    assert (folder / "Real World" / "TV").is_dir()
    assert (folder / "ImageInfo.csv").is_file()  # DomainBed keeps the loose files; they are not domains


def test_terra_incognita_refoldering(tmp_path):
    fetch = LocalFetch(make_terra(tmp_path / "src"))
    folder = db.download_terra_incognita(tmp_path / "d", fetch=fetch, progress=False)
    _, expected = terra_annotations()
    want = sorted(dest for dests in expected.values() for dest in dests)
    assert [f for f in _files(folder) if not f.startswith(".")] == want
    scan = scan_folder(folder)
    assert scan.domains == ["location_100", "location_38", "location_43", "location_46"]
    assert scan.classes == list(db.TERRA_CATEGORIES) and not scan.fatal_issues
    assert not (tmp_path / "d" / ".terra_incognita.incomplete").exists()


def test_terra_plan_matches_domainbed_rules():
    halves, expected = terra_annotations()
    plan, locations = db.terra_plan(halves)
    assert locations == {"38", "46", "100", "43"}
    assert plan == {k: v for k, v in expected.items() if v}


def test_domain_net_removes_duplicates_and_checks_counts(tmp_path):
    urls, expected = make_domain_net(tmp_path / "src")
    spec = _domainnet_spec(expected)
    src = dataclasses.replace(db.DOMAINNET_DUPLICATES, sha256=_dn_sha(urls[db.DOMAINNET_DUPLICATES.url]))
    orig = db.DOMAINNET_DUPLICATES
    db.DOMAINNET_DUPLICATES = src
    try:
        folder = db.download_domain_net(tmp_path / "d", fetch=LocalFetch(urls), spec=spec, progress=False)
    finally:
        db.DOMAINNET_DUPLICATES = orig
    scan = scan_folder(folder, verify=False)
    assert scan.domains == list(db.DOMAINNET_SOURCES)
    assert {d: sum(c.values()) for d, c in scan.counts().items()} == expected
    assert not (folder / "clipart" / "animal_migration" / "clipart_001_000000.jpg").exists()
    assert (folder / "quickdraw" / "animal_migration" / "quickdraw_001_000000.jpg").exists()
    assert dl.read_marker(folder)["warnings"] == []


def test_domain_net_duplicate_list_is_checksummed(tmp_path):
    urls, expected = make_domain_net(tmp_path / "src")  # list differs from DomainBed's pinned one
    with pytest.raises(DownloadError, match="SHA-256"):
        db.download_domain_net(tmp_path / "d", fetch=LocalFetch(urls), spec=_domainnet_spec(expected),
                               progress=False)
    assert not (tmp_path / "d" / "domain_net").exists()
    assert (tmp_path / "d" / ".downloads" / "domain_net_duplicates.txt.corrupt").exists()


def test_strict_counts_turns_count_mismatch_into_failure(tmp_path):
    with pytest.raises(DownloadError, match="expected 2048"):
        db.download_pacs(tmp_path / "d", fetch=LocalFetch(make_pacs(tmp_path / "src")), progress=False,
                         strict_counts=True)
    assert not (tmp_path / "d" / "PACS").exists()


# --------------------------------------------------------------------------- idempotence and failures
def test_second_call_does_nothing(tmp_path):
    root = tmp_path / "d"
    db.download_pacs(root, fetch=LocalFetch(make_pacs(tmp_path / "src")), progress=False)
    before = {p: p.stat().st_mtime_ns for p in (root / "PACS").rglob("*")}

    def no_network(url, dest):
        raise AssertionError(f"fetched {url} again")

    assert db.download_pacs(root, fetch=no_network, progress=False) == root / "PACS"
    assert {p: p.stat().st_mtime_ns for p in (root / "PACS").rglob("*")} == before


def test_failed_fetch_leaves_no_dataset_folder(tmp_path):
    def broken(url, dest):
        dest.with_name(dest.name + ".part").write_bytes(b"half")
        raise DownloadError(f"connection reset while fetching {url}")

    with pytest.raises(DownloadError, match="connection reset"):
        db.download_pacs(tmp_path / "d", fetch=broken, progress=False)
    assert not (tmp_path / "d" / "PACS").exists()
    assert main(["data", "check", "PACS", "--root", str(tmp_path / "d")]) == 1


def test_truncated_archive_is_reported_then_recovered(tmp_path, capsys):
    good = make_pacs(tmp_path / "src")
    url = db.PACS_SOURCE.url
    truncated = tmp_path / "src" / "trunc.zip"
    truncated.write_bytes(good[url].read_bytes()[: good[url].stat().st_size // 2])
    root = tmp_path / "d"
    with pytest.raises(DownloadError, match="PACS.zip"):
        db.download_pacs(root, fetch=LocalFetch({url: truncated}), progress=False)
    assert not (root / "PACS").exists()
    # the message says to delete the archive; after that a new run succeeds
    (root / ".downloads" / "PACS.zip").unlink()
    db.download_pacs(root, fetch=LocalFetch(good), progress=False)
    assert (root / "PACS").is_dir() and not (root / ".PACS.incomplete").exists()


def test_html_instead_of_archive_is_explained(tmp_path):
    page = tmp_path / "src" / "quota.html"
    page.write_text("<!DOCTYPE html><html><body>Google Drive - quota exceeded</body></html>")
    with pytest.raises(DownloadError, match="web page"):
        db.download_pacs(tmp_path / "d", fetch=LocalFetch({db.PACS_SOURCE.url: page}), progress=False)
    assert not (tmp_path / "d" / "PACS").exists()


def test_interrupted_postprocessing_then_resume_without_refetch(tmp_path):
    root = tmp_path / "d"
    bad = make_terra(tmp_path / "src", drop_image=True)
    with pytest.raises(DownloadError, match="not in"):
        db.download_terra_incognita(root, fetch=LocalFetch(bad), progress=False)
    assert not (root / "terra_incognita").exists()
    assert (root / ".terra_incognita.incomplete").exists()  # left for inspection, never looks complete
    # fix the images archive in the cache (as a re-download would), keep the annotations: no refetch
    (tmp_path / "src2").mkdir()
    good = make_terra(tmp_path / "src2")
    shutil.copyfile(good[db.TERRA_SOURCES["images"].url], root / ".downloads" / "eccv_18_all_images_sm.tar.gz")
    fetch = LocalFetch({})
    db.download_terra_incognita(root, fetch=fetch, progress=False)
    assert fetch.calls == []
    assert (root / "terra_incognita").is_dir() and not (root / ".terra_incognita.incomplete").exists()


def test_wrong_layout_is_rejected(tmp_path):
    with pytest.raises(DownloadError, match="'sketch' is missing"):
        db.download_pacs(tmp_path / "d", fetch=LocalFetch(make_pacs(tmp_path / "src", drop_domain="sketch")),
                         progress=False)
    assert not (tmp_path / "d" / "PACS").exists()


def test_archive_without_expected_top_folder(tmp_path):
    z = _zip(tmp_path / "src" / "PACS.zip", {"pacs_v2/photo/dog/a.jpg": JPG})
    with pytest.raises(DownloadError, match="no folder 'kfold'"):
        db.download_pacs(tmp_path / "d", fetch=LocalFetch({db.PACS_SOURCE.url: z}), progress=False)


def test_unsafe_archive_member_is_refused(tmp_path):
    z = _zip(tmp_path / "src" / "PACS.zip", {"kfold/photo/dog/a.jpg": JPG, "../escape.jpg": JPG})
    with pytest.raises(DownloadError, match="unsafe"):
        db.download_pacs(tmp_path / "d", fetch=LocalFetch({db.PACS_SOURCE.url: z}), progress=False)
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "d" / "escape.jpg").exists()


def test_existing_domainbed_folder_is_adopted_or_refused(tmp_path, image_folder):
    root = tmp_path / "d"
    # A complete folder made by DomainBed's own script (no marker): adopted, nothing fetched.
    src = tmp_path / "src" / "unpacked"
    dl.extract_archive(make_pacs(tmp_path / "src")[db.PACS_SOURCE.url], src, progress=False)
    shutil.copytree(src / "kfold", root / "PACS")

    def no_network(url, dest):
        raise AssertionError("should not fetch")

    db.download_pacs(root, fetch=no_network, progress=False)
    assert dl.read_marker(root / "PACS")["adopted_existing_folder"] is True
    # Something else in the way: refused, left untouched.
    shutil.copytree(image_folder, root / "VLCS")
    before = _files(root / "VLCS")
    with pytest.raises(DownloadError, match="not a complete VLCS"):
        db.download_vlcs(root, fetch=no_network, progress=False)
    assert _files(root / "VLCS") == before


def test_cli_download_uses_default_fetch(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dl, "default_fetch", LocalFetch(make_pacs(tmp_path / "src")))
    assert main(["data", "download", "pacs", "--root", str(tmp_path / "d")]) == 0
    assert "PACS is ready in" in capsys.readouterr().out
    assert main(["data", "check", "PACS", "--root", str(tmp_path / "d")]) == 0


def test_cli_download_failure_is_a_clean_error(tmp_path, monkeypatch, capsys):
    def offline(url, dest):
        raise DownloadError(f"download of {url} failed: network unreachable")

    monkeypatch.setattr(dl, "default_fetch", offline)
    code = main(["data", "download", "VLCS", "--root", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 1
    assert db.VLCS_SOURCE.url in err and "Traceback" not in err


def test_disk_errors_while_unpacking_are_download_errors(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(db, "_build_terra", full_disk)
    monkeypatch.setattr(db, "download_terra_incognita",
                        db._downloader(lambda: db.TERRAINCOGNITA, lambda: dict(db.TERRA_SOURCES), db._build_terra))
    with pytest.raises(DownloadError, match="No space left"):
        db.download_terra_incognita(tmp_path / "d", fetch=LocalFetch(make_terra(tmp_path / "src")), progress=False)
    assert not (tmp_path / "d" / "terra_incognita").exists()
