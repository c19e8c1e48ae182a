"""``vl2v serve``: a teacher behind a pay-per-query HTTP embedding API (:mod:`vl2v.serving`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vl2v.cli.common import CLIError, parse_kv


def _cmd_serve(args: argparse.Namespace) -> int:
    from vl2v.serving import KEYS_FILE, KeysFileError, add_key, confine_writes
    from vl2v.utils.io import vl2v_home

    data_dir = Path(args.data_dir).expanduser() if args.data_dir else vl2v_home() / "serve"
    keys = Path(args.keys).expanduser() if args.keys else data_dir / KEYS_FILE
    confine_writes(data_dir)  # before torch is imported
    from vl2v.serving.service import ServiceConfig, serve

    try:
        if args.new_key:
            token = add_key(keys, args.new_key)
            print(f"new API key {args.new_key!r} added to {keys} (only its SHA-256 is stored). "
                  f"The key, shown once:\n{token}")
            return 0
        cfg = ServiceConfig(data_dir=data_dir, keys_file=keys, max_batch_images=args.max_batch,
                            max_batch_texts=args.max_texts, max_request_bytes=int(args.max_request_mb * 1024 * 1024),
                            max_image_pixels=args.max_image_pixels)
        serve(args.teacher, parse_kv(args.teacher_opt, "--teacher-opt"), cfg, host=args.host, port=args.port,
              device=args.device, log_level=args.log_level)
    except (KeysFileError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # serve
    q = sub.add_parser("serve", help="expose a teacher as a pay-per-query HTTP embedding API (keys, metering, idempotent retries)",
                       description="Serve a teacher's image and text embeddings over HTTP (FastAPI on uvicorn) behind "
                       "API keys, metering each key's queries in DATA_DIR/usage.sqlite. Create a key first with "
                       "--new-key NAME. Clients use --teacher remote:http://HOST:PORT. See docs/serving.md.")
    q.add_argument("--teacher", default="conse", help="teacher to serve (default conse; see `vl2v list teachers`)")
    q.add_argument("--teacher-opt", nargs="+", metavar="KEY=VALUE", help="teacher backend options, e.g. k=5")
    q.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; plain HTTP: use a TLS proxy beyond loopback)")
    q.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    q.add_argument("--data-dir", help="the only folder the service writes: usage ledger and stored answers (default ~/.cache/vl2v/serve)")
    q.add_argument("--keys", help="API keys file, lines 'NAME sha256:HEX' (default DATA_DIR/keys.txt)")
    q.add_argument("--new-key", metavar="NAME", help="add a new random API key NAME to the keys file, print it once, and exit")
    q.add_argument("--max-batch", type=int, default=64, help="most images per request (default 64)")
    q.add_argument("--max-texts", type=int, default=256, help="most texts per request (default 256)")
    q.add_argument("--max-request-mb", type=float, default=32.0, help="largest request body in MiB (default 32)")
    q.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="largest image in pixels, checked before decoding (default 4096*4096)")
    q.add_argument("--device", help="device for the teacher, e.g. cuda (default: the backend's)")
    q.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    q.set_defaults(func=_cmd_serve)
