"""``vl2v eval``: accuracy, per-class accuracy and confusion matrix of a trained model on a labelled folder
(:mod:`vl2v.serving.evaluate`)."""

from __future__ import annotations

import argparse
import sys

from vl2v.cli.common import CLIError


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from vl2v.errors import UserError
    from vl2v.serving.evaluate import evaluate, format_result

    try:
        res = evaluate(args.model, args.data, which=args.which, store=args.store, batch_size=args.batch_size)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    except UserError as exc:
        if exc.exit_code != 2:
            raise
        raise CLIError(str(exc)) from None
    if args.json:
        print(json.dumps(res.as_dict(), indent=2))
    else:
        print(format_result(res))
    if res.unreadable:
        print(f"vl2v: {len(res.unreadable)} of {len(res.data.files)} images could not be read and were not scored",
              file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("eval", help="accuracy, per-class accuracy and confusion matrix of a model on a labelled folder",
                       description="Score a trained model on a labelled image folder: FOLDER/class/image, or "
                       "FOLDER/domain/class/image (scored per domain and overall). Class folders are matched to the "
                       "model's class names exactly; a class the model does not know is an error, except for runs "
                       "of adip, sd and zeroshot, whose head compares with the teacher's class text embeddings: "
                       "the new names are embedded with the run's teacher and prompt templates. Unreadable images "
                       "are listed and not scored.")
    q.add_argument("model", metavar="RUN", help="run directory (OUT/<algorithm>/target-<i>-<domain>/seed<s>), its "
                   "model.safetensors, or an exported student.onnx / student.pt (with its sidecar JSON)")
    q.add_argument("--data", required=True, metavar="FOLDER",
                   help="labelled images: FOLDER/class/image or FOLDER/domain/class/image")
    q.add_argument("--which", choices=["selected", "swad"], default="selected",
                   help="for a run directory: the selected checkpoint (default) or the SWAD average")
    q.add_argument("--json", action="store_true", help="print the results as JSON (per domain and overall: images, "
                   "correct, accuracy, per-class accuracy, confusion matrix) instead of text")
    q.add_argument("--batch-size", type=int, default=64, help="images decoded and predicted at once (default 64)")
    q.add_argument("--store", help="teacher store for embedding class names a text-head run does not know "
                   "(default ~/.cache/vl2v/teacher_store.sqlite; 'memory' for none)")
    q.set_defaults(func=_cmd_eval)
