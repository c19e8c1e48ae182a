"""The LiT build's sources and the first of its benchmark checks: design families.

Every package in ``lit_sources.json`` and in OfflinePACS's ``vl2v/data/offline/pins.json`` names its artwork
``family``: the designer or design system its pictures come from, shared across styles and renders (Fluent
Emoji flat, high-contrast and 3D are all ``fluent``). The benchmark's pictures are those of its families, so
a LiT image source of one of them would teach the teacher the benchmark's designs, whatever its package name
or rendering. :func:`check_sources` refuses such a source (and one without a family). ``no-artwork`` marks a
package that ships names only, no pictures (emoji-datasource's ``emoji.json``, the captions of both): it is
no family of pictures and may only be used for names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable, Sequence

from vl2v.teachers.lit_common import LiTBuildError, make_pin, sources_file

NO_ARTWORK = "no-artwork"  # the family of a package that ships names only (no pictures)


@dataclass(frozen=True)
class Source:
    """A package as the family check sees it. ``images``: its pictures are used (False: names only)."""

    key: str
    name: str
    family: str
    images: bool = True


def source_pins() -> list:
    """The pinned packages of ``lit_sources.json`` (:class:`~vl2v.data.offline.fetch.PackagePin`)."""
    return [make_pin(e) for e in sources_file()["packages"]]


def lit_sources(spec: dict[str, Any] | None = None) -> list[Source]:
    """The LiT build's packages; a package is an image source when it has a ``sets`` entry."""
    spec = spec if spec is not None else sources_file()
    sets = spec.get("sets", {})
    return [Source(e["key"], e["name"], e.get("family") or "", e["key"] in sets) for e in spec["packages"]]


def record_sources(records: Iterable[dict[str, Any]]) -> list[Source]:
    """The family check's view of a build's source records (an injected pool: ``key``, ``package``,
    ``family``, ``role``; ``role`` "captions" = names only)."""
    return [Source(r["key"], r.get("package", r["key"]), r.get("family") or "", r.get("role") != "captions")
            for r in records]


def benchmark_sources(pins: dict[str, Any] | None = None) -> list[Source]:
    """OfflinePACS's packages (``pins.json``; ``pins``: its parsed content instead)."""
    if pins is None:
        pins = json.loads(resources.files("vl2v.data.offline").joinpath("pins.json").read_text("utf-8"))
    return [Source(e["key"], e["name"], e.get("family") or "", e.get("family") != NO_ARTWORK)
            for e in pins["packages"]]


def benchmark_families(bench: Sequence[Source] | None = None) -> dict[str, Source]:
    """Artwork family -> the first OfflinePACS package of it (``no-artwork`` is no family of pictures)."""
    out: dict[str, Source] = {}
    for b in bench if bench is not None else benchmark_sources():
        if not b.family:
            raise LiTBuildError(f"OfflinePACS package {b.name} ({b.key}) has no artwork family in "
                                "vl2v/data/offline/pins.json: the LiT build cannot check its sources against it")
        if b.family != NO_ARTWORK:
            out.setdefault(b.family, b)
    return out


def check_sources(sources: Sequence[Source], bench: Sequence[Source] | None = None) -> None:
    """Refuse an image source of a family OfflinePACS uses (or that is an OfflinePACS package), one without a
    family, and a names-only (``no-artwork``) package used for images; one line naming the package, its family
    and the benchmark package of that family."""
    bench = list(bench) if bench is not None else benchmark_sources()
    families = benchmark_families(bench)
    bench_names = {b.name: b for b in bench if b.images}
    for s in sources:
        if not s.family:
            raise LiTBuildError(f"LiT source {s.name} ({s.key}) has no artwork family: give it one in "
                                "vl2v/teachers/lit_sources.json (the build refuses sources of a benchmark family)")
        if not s.images:
            continue  # names only, no pictures
        if s.family == NO_ARTWORK:
            raise LiTBuildError(f"LiT source {s.name} ({s.key}) is marked {NO_ARTWORK!r} but is used for images: "
                                "name its artwork family in vl2v/teachers/lit_sources.json")
        hit = families.get(s.family) or bench_names.get(s.name)
        if hit is not None:
            raise LiTBuildError(f"{s.name} cannot be a LiT teacher source: its artwork family {s.family!r} is "
                                f"OfflinePACS's (benchmark package {hit.name}, family {hit.family!r}); the teacher "
                                "must never train on the benchmark's designs: drop it from "
                                "vl2v/teachers/lit_sources.json")


__all__ = ["NO_ARTWORK", "Source", "benchmark_families", "benchmark_sources", "check_sources", "lit_sources",
           "record_sources", "source_pins"]
