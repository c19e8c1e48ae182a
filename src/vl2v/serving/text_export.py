"""The text tower of the offline teachers as ONNX, with a tokenizer that needs neither vl2v nor transformers.

The offline teachers (``conse``, ``lit``) embed text with the all-MiniLM-L6-v2 sentence encoder
(sentence-transformers: BERT, mean of the last hidden states over the unmasked tokens, L2 normalised).
:func:`write_text_bundle` writes, into an export folder,

* ``text.onnx``: ``input_ids`` and ``attention_mask`` (int64 ``[N, L]``) -> ``embedding`` (float32
  ``[N, D]``, unit length): what the teacher's ``embed_texts`` gives for each text;
* ``vocab.txt`` (the model's WordPiece vocabulary), ``wordpiece.json`` (the tokenizer's settings and its
  normalisation of every character) and ``wordpiece.py`` (:mod:`vl2v.serving.wordpiece`, standard library
  only), which give the same token ids as the model's tokenizer.

:class:`TextBundle` reads them back (``vl2v predict student.onnx --classes ...``). This module imports
neither :mod:`vl2v.serving.export` nor :mod:`vl2v.serving.predict` (both import it).
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vl2v.errors import ConfigError
from vl2v.serving import wordpiece
from vl2v.utils.hashing import file_digest

OFFLINE_TEXT_TEACHERS = ("conse", "lit")
TEXT_MODEL, TOKENIZER_MODULE = "text.onnx", "wordpiece.py"
VOCAB, SPEC = wordpiece.VOCAB, wordpiece.SPEC
TEXT_INPUTS, TEXT_OUTPUT = ("input_ids", "attention_mask"), "embedding"
TEXT_BATCH = 128


class TextTowerError(ConfigError):
    """The text tower cannot be exported, or an export folder's text tower cannot be used; says why."""


class SentenceEmbedding(nn.Module):
    """token ids + attention mask -> normalize(mean of BERT's last hidden states over the unmasked tokens)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        w = attention_mask.unsqueeze(-1).to(h.dtype)
        e = (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1e-9)
        return F.normalize(e, dim=-1)


# --------------------------------------------------------------------------- the run's text encoder
def run_text_encoder(args: dict[str, Any]):
    """The sentence encoder of a run's offline teacher, checked against the run's teacher identity:
    ``(encoder, None)``, or ``(None, why)`` when the run's teacher has no text tower this can export."""
    teacher = str(args.get("teacher") or "")
    backend = teacher.partition(":")[0]
    if backend not in OFFLINE_TEXT_TEACHERS:
        return None, (f"the run's teacher {teacher or '?'!r} has no exportable text tower (only "
                      f"{' and '.join(OFFLINE_TEXT_TEACHERS)}, whose text side is a MiniLM sentence encoder)")
    from vl2v.teachers.base import TeacherError
    from vl2v.teachers.conse import load_sentence_encoder, text_tag

    opts = args.get("teacher_options") or {}
    try:
        encoder, path = load_sentence_encoder(opts.get("text_model") if backend == "conse" else None)
    except (TeacherError, OSError, ValueError) as exc:
        return None, f"the teacher's sentence encoder cannot be loaded here ({exc})"
    tag = f"text=all-MiniLM-L6-v2:{text_tag(path)}"
    identity = str(args.get("teacher_identity") or "")
    if tag not in identity:
        return None, (f"the sentence encoder here ({tag}) is not the one the run was trained with "
                      f"(teacher identity {identity or '?'})")
    return encoder.eval(), None


def _check_sentence_encoder(encoder) -> nn.Module:
    """The BERT module of a mean-pooled, normalised sentence-transformers encoder; TextTowerError otherwise."""
    mods = list(encoder)
    names = [type(m).__name__ for m in mods]
    pool = mods[1].get_config_dict() if len(mods) > 1 and hasattr(mods[1], "get_config_dict") else {}
    mean = pool.get("pooling_mode") == "mean" or (pool.get("pooling_mode_mean_tokens")
                                                   and not pool.get("pooling_mode_cls_token"))
    bert = getattr(mods[0], "auto_model", None) or getattr(mods[0], "model", None)
    if names[:3] != ["Transformer", "Pooling", "Normalize"] or len(mods) != 3 or not mean or bert is None:
        raise TextTowerError(f"the sentence encoder is {' -> '.join(names)} ({pool}); the ONNX text tower is "
                             "written for Transformer -> mean Pooling -> Normalize")
    return bert


# --------------------------------------------------------------------------- the tokenizer's description
def tokenizer_spec(encoder) -> dict[str, Any]:
    """``wordpiece.json``: the encoder's tokenizer settings and its normalisation of every character."""
    backend = encoder.tokenizer.backend_tokenizer
    raw = json.loads(backend.to_str())
    model, norm = raw.get("model") or {}, raw.get("normalizer") or {}
    if (model.get("type"), norm.get("type"), (raw.get("pre_tokenizer") or {}).get("type")) != (
            "WordPiece", "BertNormalizer", "BertPreTokenizer"):
        raise TextTowerError("the sentence encoder's tokenizer is not a BERT WordPiece tokenizer "
                             f"({model.get('type')}, {norm.get('type')}); wordpiece.py cannot reproduce it")
    added = raw.get("added_tokens") or []
    if any(t.get("normalized") or t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
        raise TextTowerError("the tokenizer has added tokens that wordpiece.py does not match (normalised or "
                             "stripped ones)")
    tok = encoder.tokenizer
    probe = tok("x")["input_ids"]
    if [probe[0], probe[-1]] != [tok.cls_token_id, tok.sep_token_id]:
        raise TextTowerError("the tokenizer does not frame a text as [CLS] ... [SEP]")
    return {
        "format": wordpiece.FORMAT,
        "source": str(getattr(tok, "name_or_path", "")),
        "max_length": int(encoder.max_seq_length),
        "max_input_chars_per_word": int(model.get("max_input_chars_per_word", 100)),
        "continuing_subword_prefix": model.get("continuing_subword_prefix", "##"),
        "unk_token": tok.unk_token, "cls_token": tok.cls_token, "sep_token": tok.sep_token,
        "pad_token": tok.pad_token,
        "special_tokens": [t["content"] for t in added],
        "normalizer": {k: v for k, v in norm.items() if k != "type"},
        "chars": _cached_char_table(backend, raw),
    }


_CHAR_TABLES: dict[str, dict[str, Any]] = {}


def _cached_char_table(backend, raw: dict[str, Any]) -> dict[str, Any]:
    """:func:`char_table`, once per process for each normaliser and pre-tokenizer (about 2 s)."""
    key = json.dumps([raw.get("normalizer"), raw.get("pre_tokenizer")], sort_keys=True)
    if key not in _CHAR_TABLES:
        _CHAR_TABLES[key] = char_table(backend)
    return _CHAR_TABLES[key]


def _ranges(cps: Sequence[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for cp in sorted(cps):
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


def char_table(backend, chunk: int = 8192) -> dict[str, Any]:
    """What the tokenizer's normaliser makes of each code point (``drop``: nothing, ``space``, ``pad``: spaces
    around it, ``map``: anything else that changes it) and which characters its pre-tokenizer splits at
    (``whitespace``) or isolates (``punct``), computed by the tokenizer itself."""
    norm, pre = backend.normalizer, backend.pre_tokenizer
    cps = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    kinds: dict[str, list[int]] = {"drop": [], "space": [], "pad": []}
    mapping: dict[str, str] = {}
    punct, space = [], []
    for s in range(0, len(cps), chunk):
        part = [chr(cp) for cp in cps[s:s + chunk]]
        got = norm.normalize_str("|".join(part)).split("|") if "|" not in part else []
        if len(got) != len(part):  # (the chunk holding "|" itself)
            got = [norm.normalize_str(ch) for ch in part]
        for ch, out in zip(part, got):
            kind = {"": "drop", " ": "space", f" {ch} ": "pad"}.get(out)
            if kind:
                kinds[kind].append(ord(ch))
            elif out != ch:
                mapping[str(ord(ch))] = out
        # "a" between the characters (ch i at offset 2i + 1): ch alone in a word (punctuation), in no word
        # (whitespace), or in the word of its neighbours
        end = 0
        for _, (a, b) in pre.pre_tokenize_str("a" + "a".join(part) + "a"):
            space.extend(ord(part[(p - 1) // 2]) for p in range(end, a) if p % 2)
            if b - a == 1 and a % 2:
                punct.append(ord(part[(a - 1) // 2]))
            end = b
        space.extend(ord(part[(p - 1) // 2]) for p in range(end, 2 * len(part) + 1) if p % 2)
    return {**{k: _ranges(v) for k, v in kinds.items()}, "map": mapping, "punct": _ranges(punct),
            "whitespace": _ranges(space)}


# --------------------------------------------------------------------------- writing the bundle
def export_text_onnx(bert: nn.Module, path: Path, opset: int = 18) -> None:
    """``SentenceEmbedding(bert)`` as ONNX (dynamic batch and length) at ``path``."""
    from vl2v.utils.io import atomic_path

    model = SentenceEmbedding(bert).eval()
    ids = torch.tensor([[101, 1037, 6302, 1997, 1037, 102], [101, 1037, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    batch, length = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("length", min=2, max=512)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (ids, mask), dynamo=True, input_names=list(TEXT_INPUTS),
                                 dynamic_shapes={"input_ids": {0: batch, 1: length},
                                                 "attention_mask": {0: batch, 1: length}},
                                 opset_version=opset, external_data=False, verbose=False)
        rename_output(prog.model.graph, TEXT_OUTPUT)
        prog.save(str(tmp), external_data=False)


def rename_output(graph, *names: str) -> None:
    """Name the graph's outputs ``names`` (an inner value already so named, such as the exporter's
    ``embedding`` lookup node, is renamed first)."""
    taken = {v.name for node in graph for v in node.outputs} | {v.name for v in graph.initializers.values()}
    for node in graph:
        for v in node.outputs:
            if v.name in names and v not in graph.outputs:
                n = 0
                while f"{v.name}_{n}" in taken:
                    n += 1
                v.name = f"{v.name}_{n}"
    for v, name in zip(graph.outputs, names):
        v.name = name


def write_text_bundle(encoder, out: Path, opset: int = 18) -> dict[str, Any]:
    """Write ``text.onnx``, ``vocab.txt``, ``wordpiece.json`` and ``wordpiece.py`` into ``out``; returns their
    description (for the sidecar). TextTowerError when the encoder is not one this can export."""
    bert = _check_sentence_encoder(encoder)
    spec = tokenizer_spec(encoder)
    from vl2v.utils.io import atomic_write_text

    t0 = time.time()
    export_text_onnx(bert, out / TEXT_MODEL, opset)
    vocab = sorted(encoder.tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise TextTowerError("the tokenizer's vocabulary ids are not 0..N-1; vocab.txt cannot hold it")
    atomic_write_text(out / VOCAB, "".join(f"{tok}\n" for tok, _ in vocab))
    atomic_write_text(out / SPEC, json.dumps(spec, ensure_ascii=False, separators=(",", ":")) + "\n")
    shutil.copyfile(Path(wordpiece.__file__), out / TOKENIZER_MODULE)
    return {"model": TEXT_MODEL, "inputs": {n: {"shape": ["batch", "length"], "dtype": "int64"} for n in TEXT_INPUTS},
            "output": {"name": TEXT_OUTPUT, "shape": ["batch", int(bert.config.hidden_size)], "dtype": "float32",
                       "meaning": "the teacher's text embedding of each text (unit length)"},
            "tokenizer": {"module": TOKENIZER_MODULE, "vocab": VOCAB, "settings": SPEC,
                          "max_length": spec["max_length"], "normalizer": spec["normalizer"]},
            "sha256": file_digest(out / TEXT_MODEL), "seconds": round(time.time() - t0, 2)}


# --------------------------------------------------------------------------- reading it back
def ort_session(path: str | Path):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise TextTowerError("running an ONNX model needs onnxruntime (pip install onnxruntime)") from exc
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class TextBundle:
    """The text tower of an export folder: texts -> embeddings, class names -> ``T_c`` (numpy float32)."""

    def __init__(self, folder: str | Path, templates: Sequence[str]) -> None:
        folder = Path(folder)
        missing = [f for f in (TEXT_MODEL, VOCAB, SPEC) if not (folder / f).is_file()]
        if missing:
            raise TextTowerError(f"{folder} lacks {', '.join(missing)} of its text tower; export the run again")
        if not templates:
            raise TextTowerError(f"{folder}: the export records no prompt templates")
        self.tokenizer = wordpiece.WordPiece.load(folder)
        self.session = ort_session(folder / TEXT_MODEL)
        self.templates = list(templates)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings [N, D] of ``texts``, as the teacher's ``embed_texts`` gives them."""
        out = [np.zeros((0, int(self.session.get_outputs()[0].shape[-1])), np.float32)]
        for s in range(0, len(texts), TEXT_BATCH):
            ids, mask = self.tokenizer.encode(list(texts[s:s + TEXT_BATCH]))
            feed = {"input_ids": np.asarray(ids, np.int64), "attention_mask": np.asarray(mask, np.int64)}
            out.append(self.session.run([TEXT_OUTPUT], feed)[0])
        return np.concatenate(out).astype(np.float32)

    def classifier(self, names: Sequence[str]) -> np.ndarray:
        """``T_c`` [C, D]: the normalised mean over the templates of each name's prompt embeddings."""
        e = self.embed([t.format(c=n) for n in names for t in self.templates])
        return class_embeddings(e, len(names), len(self.templates))


def class_embeddings(prompt_emb: np.ndarray, n_classes: int, n_templates: int) -> np.ndarray:
    e = prompt_emb / np.maximum(np.linalg.norm(prompt_emb, axis=-1, keepdims=True), 1e-12)
    t = e.reshape(n_classes, n_templates, -1).mean(axis=1)
    return (t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
