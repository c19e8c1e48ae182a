"""``vl2v export`` and ``vl2v predict``: a deployable student and its predictions (:mod:`vl2v.serving`)."""

from __future__ import annotations

import argparse
import sys

from vl2v.cli.common import CLIError


def _cmd_export(args: argparse.Namespace) -> int:
    from vl2v.serving.export import export_run

    res = export_run(args.run, fmt=args.format, which=args.which, out_dir=args.out, name=args.name)
    m = res.meta
    print(f"wrote {res.model_path}  ({m['algorithm']}, {len(m['classes'])} classes, input [N,3,{m['input']['shape'][-1]},"
          f"{m['input']['shape'][-1]}] RGB in [0,1], head: {m['head']['kind']})")
    print(f"wrote {res.sidecar_path}  (classes, preprocessing, teacher identity, source run)")
    print(f"parity with PyTorch on {m['parity']['images']}: max |logit difference| = {res.max_abs_diff:.2e}")
    ov = m.get("open_vocabulary")
    if ov:
        folder = res.model_path.parent
        print(f"wrote {folder / ov['classes_file']}  (class names, their text embeddings, prompt templates); "
              f"{res.model_path.name} also outputs `embedding`")
        tower = ov.get("text_tower")
        if tower:
            tok = tower["tokenizer"]
            print(f"wrote {folder / tower['model']}, {tok['module']}, {tok['vocab']}, {tok['settings']}  (the "
                  f"teacher's text tower: new class names with `vl2v predict {res.model_path} IMAGE --classes "
                  "NAMES`, or onnxruntime alone, docs/deploy.md); text embeddings within "
                  f"{tower['parity']['max_abs_text_diff']:.1e} of the teacher's")
        else:
            print(f"no text tower exported ({ov.get('why_no_text_tower')}): for new class names use "
                  "`vl2v predict RUN IMAGE --classes NAMES` on the run directory")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from vl2v.serving.predict import expand_images, format_predictions, load_predictor

    if args.topk < 1:
        raise CLIError(f"--topk must be at least 1, got {args.topk}")
    named = args.classes is not None or args.classes_file is not None
    if args.store is not None and not named:
        raise CLIError("--store is used only with --classes or --classes-file (to embed the class names)")
    files = expand_images(args.images)
    if not files:
        raise CLIError("no image files given (folders are searched for images)")
    pred = _named_predictor(args) if named else load_predictor(args.model, which=args.which)
    out = pred.predict_files(files, topk=args.topk)
    if args.json:
        extra = {"classes": pred.classes, "teacher_identity": pred.meta.get("teacher_identity")} if named else {}
        print(json.dumps({"model": pred.source, "kind": pred.kind, **extra,
                          "predictions": [p.as_dict() for p in out]}, indent=2))
    else:
        print(format_predictions(out))
    bad = sum(1 for p in out if p.error)
    if bad:
        print(f"vl2v: {bad} of {len(out)} images could not be read", file=sys.stderr)
    return 1 if bad else 0


def _named_predictor(args: argparse.Namespace):
    """``--classes`` / ``--classes-file``: the run's student (or teacher) over those class names."""
    from vl2v.serving.predict import load_text_predictor, parse_class_list

    classes = parse_class_list(args.classes, args.classes_file)
    return load_text_predictor(args.model, classes, which=args.which, store=args.store)


def register(sub: argparse._SubParsersAction) -> None:
    # export / predict
    q = sub.add_parser("export", help="export a run's student (+ head) to ONNX or TorchScript, with a JSON sidecar",
                       description="Write the trained student of a run with its head baked in (ADiP: projection and "
                       "100 x cosine to the teacher's class text embeddings; ERM/KD: linear classifier). Input: float "
                       "RGB images [N,3,S,S] in [0,1] (normalisation inside); output: class logits. The sidecar "
                       "NAME.EXT.json holds class names, preprocessing, teacher identity and the source run. An ONNX "
                       "student of adip or sd also outputs its embedding, with the class embeddings and prompt "
                       "templates as data (NAME.classes.json) and, for the offline teachers conse and lit, the "
                       "teacher's text tower (text.onnx, wordpiece.py, vocab.txt, wordpiece.json) to classify new "
                       "class names without vl2v.")
    q.add_argument("run", help="a run directory, OUT/<algorithm>/target-<i>-<domain>/seed<s>")
    q.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    q.add_argument("--which", choices=["selected", "swad"], default="selected",
                   help="the selected checkpoint (default) or the SWAD average")
    q.add_argument("--out", help="output folder (default RUN/export)")
    q.add_argument("--name", default="student", help="file name without extension (default student)")
    q.set_defaults(func=_cmd_export)
    q = sub.add_parser("predict", help="top-k classes for images, from a run, its checkpoint, or an exported model",
                       description="Print the top-k classes (softmax probabilities) of each image. MODEL is a run "
                       "directory or its .safetensors checkpoint (PyTorch), an exported .onnx file (onnxruntime) or "
                       "TorchScript .pt file (each with its sidecar JSON). With --classes, a run of adip or sd "
                       "classifies with other class names, embedded with its teacher (zeroshot: the teacher itself); "
                       "so does an exported student.onnx of adip or sd whose export folder holds the teacher's text "
                       "tower (text.onnx: offline teachers).")
    q.add_argument("model", help="run directory, model.safetensors, student.onnx or student.pt")
    q.add_argument("images", nargs="+", help="image files or folders of images")
    q.add_argument("--topk", type=int, default=5, help="classes to print per image (default 5)")
    q.add_argument("--which", choices=["selected", "swad"], default="selected",
                   help="for a run directory: the selected checkpoint (default) or the SWAD average")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    q.add_argument("--classes", metavar="NAMES", help="classify with these comma-separated class names instead of "
                   "the run's (e.g. \"kite,harp,owl\"), embedded with the run's teacher text tower and prompt "
                   "templates; for run directories of adip, sd (text-space head) and zeroshot (the teacher itself), "
                   "and student.onnx exports with text.onnx beside them")
    q.add_argument("--classes-file", metavar="FILE", help="like --classes, from a file: one class name a line, or a "
                   "JSON object {name: prompt name} as training's --classnames takes")
    q.add_argument("--store", help="with --classes on a run directory: the teacher store that caches the name "
                   "embeddings (default ~/.cache/vl2v/teacher_store.sqlite; 'memory' for none); an exported "
                   "student.onnx embeds the names with its text.onnx and stores nothing")
    q.set_defaults(func=_cmd_predict)
