"""``vl2v serve``: a teacher behind a pay-per-query HTTP embedding API (:mod:`vl2v.serving`).

Besides serving: ``--new-key NAME [--limits ...]`` adds a key, ``--set-limits NAME --limits ...`` changes a
key's quotas and rate limit, ``--usage [--json]`` prints every key's usage per period (quota windows, all time).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vl2v.cli.common import CLIError, parse_kv


def _cmd_serve(args: argparse.Namespace) -> int:
    from vl2v.serving import KEYS_FILE, KeysFileError, add_key, confine_writes
    from vl2v.utils.io import vl2v_home

    data_dir = Path(args.data_dir).expanduser() if args.data_dir else vl2v_home() / "serve"
    keys = Path(args.keys).expanduser() if args.keys else data_dir / KEYS_FILE
    confine_writes(data_dir)  # before torch is imported
    from vl2v.serving.keys import parse_limits, set_limits

    actions = [a for a in ("new_key", "set_limits", "usage") if getattr(args, a)]
    if len(actions) > 1:
        raise CLIError("give one of --new-key, --set-limits and --usage")
    if args.limits and not (args.new_key or args.set_limits):
        raise CLIError("--limits goes with --new-key NAME or --set-limits NAME")
    if args.json and not args.usage:
        raise CLIError("--json goes with --usage")
    try:
        if args.new_key:
            limits = parse_limits(args.limits or [], "--limits")
            token = add_key(keys, args.new_key, limits)
            print(f"new API key {args.new_key!r} added to {keys} (only its SHA-256 is stored"
                  f"{'; limits ' + ' '.join(limits.fields()) if limits.fields() else ''}). The key, shown once:\n{token}")
            return 0
        if args.set_limits:
            if not args.limits:
                raise CLIError("--set-limits NAME needs --limits, e.g. images=1000/day rate=5/s (or images=none)")
            limits = set_limits(keys, args.set_limits, args.limits)
            print(f"key {args.set_limits!r} in {keys}: {' '.join(limits.fields()) or 'no limits'} "
                  f"(a running service picks this up within a second)")
            return 0
        if args.usage:
            return _print_usage(data_dir, keys, args.json)
        from vl2v.config import validated
        from vl2v.serving.service import ServiceConfig, serve

        cfg = validated(ServiceConfig, dict(data_dir=data_dir, keys_file=keys, max_batch_images=args.max_batch,
                                            max_batch_texts=args.max_texts,
                                            max_request_bytes=int(args.max_request_mb * 1024 * 1024),
                                            max_image_pixels=args.max_image_pixels),
                        what="vl2v serve", labels={"max_batch_images": "--max-batch", "max_batch_texts": "--max-texts",
                                                   "max_request_bytes": "--max-request-mb (in bytes)",
                                                   "max_image_pixels": "--max-image-pixels"})
        serve(args.teacher, parse_kv(args.teacher_opt, "--teacher-opt"), cfg, host=args.host, port=args.port,
              device=args.device, log_level=args.log_level)
    except (KeysFileError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    return 0


def usage_summaries(data_dir: Path, keys: Path) -> list[dict[str, Any]]:
    """Every key's :meth:`~vl2v.serving.meter.UsageLedger.summary`: the keys file's, then keys that were billed
    but are no longer in it (``in_keys_file`` false). Reads the usage database without changing it."""
    from vl2v.serving.keys import KeyLimits, KeysFileError, parse_key_entries
    from vl2v.serving.meter import USAGE_DB, UsageLedger

    if not keys.is_file():
        raise KeysFileError(f"keys file {keys} not found (give --data-dir or --keys)")
    entries = parse_key_entries(keys.read_text(encoding="utf-8"), str(keys))
    db = data_dir / USAGE_DB
    ledger = UsageLedger(db, readonly=True) if db.is_file() else UsageLedger(":memory:")
    try:
        out = [{**ledger.summary(e.name, e.limits), "in_keys_file": True} for e in entries]
        known = {e.name for e in entries}
        out += [{**ledger.summary(k, KeyLimits()), "in_keys_file": False} for k in ledger.keys() if k not in known]
    finally:
        ledger.close()
    return out


def _print_usage(data_dir: Path, keys: Path, as_json: bool) -> int:
    from datetime import datetime, timezone

    summaries = usage_summaries(data_dir, keys)
    if as_json:
        json.dump({"data_dir": str(data_dir), "keys_file": str(keys),
                   "at": datetime.now(timezone.utc).isoformat(), "keys": summaries}, sys.stdout, indent=2)
        print()
        return 0

    def n(v: Any) -> str:
        return "-" if v is None else str(v)

    head = ("key", "period", "window start (UTC)", "images", "quota", "left", "texts", "quota", "left", "limits")
    rows = [head]
    for s in summaries:
        limits = " ".join(f"{k}={v}" for k, v in s["limits"].items() if v is not None) or "none"
        name = s["key"] if s["in_keys_file"] else f"{s['key']} (removed)"
        for i, p in enumerate(s["periods"]):
            start = (p["window_start"] or "")[:16].replace("T", " ")
            rows.append((name if i == 0 else "", p["period"], start, n(p["image_queries"]), n(p["image_quota"]),
                         n(p["image_remaining"]), n(p["text_queries"]), n(p["text_quota"]), n(p["text_remaining"]),
                         limits if i == 0 else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if not summaries:
        print(f"(no keys in {keys})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # serve
    q = sub.add_parser("serve", help="expose a teacher as a pay-per-query HTTP embedding API (keys, metering, quotas, idempotent retries)",
                       description="Serve a teacher's image and text embeddings over HTTP (FastAPI on uvicorn) behind "
                       "API keys, metering each key's queries in DATA_DIR/usage.sqlite and enforcing its quotas and "
                       "rate limit. Create a key first with --new-key NAME. Clients use --teacher remote:http://HOST:PORT. "
                       "See docs/serving.md.")
    q.add_argument("--teacher", default="conse", help="teacher to serve (default conse; see `vl2v list teachers`)")
    q.add_argument("--teacher-opt", nargs="+", metavar="KEY=VALUE", help="teacher backend options, e.g. k=5")
    q.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; plain HTTP: use a TLS proxy beyond loopback)")
    q.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    q.add_argument("--data-dir", help="the only folder the service writes: usage ledger and stored answers (default ~/.cache/vl2v/serve)")
    q.add_argument("--keys", help="API keys file, lines 'NAME sha256:HEX [LIMIT ...]' (default DATA_DIR/keys.txt)")
    q.add_argument("--new-key", metavar="NAME", help="add a new random API key NAME to the keys file, print it once, and exit")
    q.add_argument("--set-limits", metavar="NAME", help="change key NAME's --limits in the keys file and exit")
    q.add_argument("--limits", nargs="+", metavar="LIMIT",
                   help="with --new-key or --set-limits: images=N/PERIOD, texts=N/PERIOD (PERIOD minute, hour, day: "
                        "a fixed UTC window; or prepaid: a balance, +N tops it up), rate=R/s or R/min, burst=B; "
                        "'none' removes one")
    q.add_argument("--usage", action="store_true", help="print each key's queries used, quota and remaining per period, and exit")
    q.add_argument("--json", action="store_true", help="with --usage: print JSON (nothing else on stdout)")
    q.add_argument("--max-batch", type=int, default=64, help="most images per request (default 64)")
    q.add_argument("--max-texts", type=int, default=256, help="most texts per request (default 256)")
    q.add_argument("--max-request-mb", type=float, default=32.0, help="largest request body in MiB (default 32)")
    q.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="largest image in pixels, checked before decoding (default 4096*4096)")
    q.add_argument("--device", help="device for the teacher, e.g. cuda (default: the backend's)")
    q.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    q.set_defaults(func=_cmd_serve)
