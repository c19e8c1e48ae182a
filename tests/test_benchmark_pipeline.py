"""benchmarks/pipeline.py runs end to end at tiny sizes and prints every section's table with its ratios."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "pipeline.py"

# section -> (title, table header); each header names the section's ratio column(s)
TABLES = {
    "train": ("## Training images/s", "| setting | student | algorithm | variant | images/s | vs today | data wait | runs |"),
    "eval": ("## Evaluation images/s", "| variant | images/s (warm) | vs today | first pass (s) | first pass images/s |"),
    "loader": ("## Loader images/s", "| workers | memory images/s | vs today | stream images/s | vs today | "
                                     "stream vs stream 0 workers |"),
    "rss": ("## Peak resident memory", "| size | images | memory (today) | vs 1x | above imports | stream | vs 1x | "
                                       "above imports | stream vs today | seconds (memory / stream) |"),
}


def _rows(text: str, header: str) -> list[list[str]]:
    lines = text.splitlines()
    start = lines.index(header) + 2  # skip the |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_quick_benchmark_prints_every_section_with_ratios(tmp_path):
    out = tmp_path / "pipeline.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "VL2V_PROGRESS": "0"}
    p = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--sections", ",".join(TABLES), "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-4000:]
    text = p.stdout
    assert out.read_text().count("| vs today |") == text.count("| vs today |") >= 3
    for section, (title, header) in TABLES.items():
        assert title in text, section
        assert header in text, section
        rows = _rows(text, header)
        assert rows, f"{section}: empty table"
        ncols = header.count("|") - 1
        assert all(len(r) == ncols for r in rows), (section, rows)
        ratio_cols = [i for i, h in enumerate(c.strip() for c in header.strip("|").split("|")) if h.startswith("vs ")]
        for r in rows:
            for i in ratio_cols:
                assert re.fullmatch(r"\d+\.\d\dx", r[i]) and float(r[i][:-1]) > 0, (section, r)
    # the baselines are their own unit
    assert all(r[5] == "1.00x" for r in _rows(text, TABLES["train"][1]) if r[3] == "today")
    assert _rows(text, TABLES["eval"][1])[0][:3:2] == ["today", "1.00x"]
    assert _rows(text, TABLES["loader"][1])[0][2] == "1.00x"
    assert _rows(text, TABLES["rss"][1])[0][3] == "1.00x"
    # every training setting of the brief is there: fresh-augmentation and replaying algorithms, the prefix cache
    # with workers, and the paper profile with workers
    train = [(r[0].split()[0], r[2], r[3]) for r in _rows(text, TABLES["train"][1])]
    for algo in ("erm_ft (fresh aug)", "adip (views=0)", "adip (views=4)"):
        for variant in ("today", "cache_prefix", "cache_prefix + 1 workers", "cache_prefix + 2 workers"):
            assert ("fast", algo, variant) in train
    for variant in ("today", "1 workers", "2 workers"):
        assert ("paper", "erm_ft (fresh aug)", variant) in train
    workers = [r[0] for r in _rows(text, TABLES["loader"][1])]
    assert workers == [str(w) for w in range((os.cpu_count() or 1) + 1)]
    assert re.search(r"Ratio 16x/1x \(peak RSS\): memory \d+\.\d\d, stream \d+\.\d\d", text)
