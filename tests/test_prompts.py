"""Prompts as data: curated class names and named template sets (vl2v/data/prompts), --classnames."""

from __future__ import annotations

import json

import pytest

from vl2v.cli import main
from vl2v.cli.train import config_from_args, train_parser
from vl2v.config import DEFAULT_TEMPLATES
from vl2v.data.offline import CLASSES as OFFLINE_CLASSES
from vl2v.data.registry import DATASETS
from vl2v.teachers.prompts import (
    class_name,
    curated_names,
    prompt_datasets,
    prompt_file,
    prompts_for,
    resolve_class_names,
    template_set,
)


def _registered_classes() -> dict[str, tuple[str, ...]]:
    out = {}
    for e in DATASETS.entries():
        spec = e.obj
        classes = spec.extra.get("classes") or (OFFLINE_CLASSES if spec.name == "OfflinePACS" else None)
        out[spec.name] = tuple(classes) if classes else None
    return out


def test_every_registered_dataset_has_a_prompt_file_covering_its_classes():
    known = _registered_classes()
    assert set(known) <= set(prompt_datasets())
    for name, classes in known.items():
        data = prompt_file(name)
        names = data["classnames"]
        assert len(names) == DATASETS.get(name).num_classes, name
        assert all(isinstance(v, str) and v.strip() for v in names.values())
        if classes is not None:  # DomainNet's class list lives only in its prompt file
            assert set(names) == set(classes), name
        assert template_set("default", name)
    assert len(prompt_file("DomainNet")["classnames"]) == 345


def test_offline_pacs_curated_names_are_unambiguous():
    names = curated_names("OfflinePACS")
    assert names["marine"] == "sea creature" and names["bug"] == "insect"
    assert names["instrument"] == "musical instrument"
    assert "comment" in prompt_file("OfflinePACS")


def test_named_template_sets_resolve():
    clip80, rise = template_set("clip80"), template_set("rise")
    assert len(clip80) == 80 and len(set(clip80)) == 80 and all("{c}" in t for t in clip80)
    assert len(rise) == 7 and "itap of a {c}." in rise
    assert template_set("default") == DEFAULT_TEMPLATES
    with pytest.raises(ValueError, match="clip80"):
        template_set("nope")
    assert config_from_args(train_parser().parse_args(["--templates", "rise"])).train.templates == rise


def test_default_prompts_are_curated_for_a_registered_dataset_and_folder_names_otherwise(tmp_path):
    classes = ["Alarm_Clock", "dog", "teddy-bear"]
    assert resolve_class_names(classes) == [class_name(c) for c in classes] == ["Alarm Clock", "dog", "teddy-bear"]
    assert resolve_class_names(classes, "auto", None) == ["Alarm Clock", "dog", "teddy-bear"]  # no prompt file
    assert resolve_class_names(["bug", "marine"], "auto", "OfflinePACS") == ["insect", "sea creature"]
    assert prompts_for(classes, DEFAULT_TEMPLATES) == ["a photo of a Alarm Clock", "a photo of a dog",
                                                       "a photo of a teddy-bear"]
    cfg = config_from_args(train_parser().parse_args([]))
    assert cfg.prompt_names == "auto" and cfg.classnames is None and cfg.train.class_names is None
    assert cfg.train.templates == DEFAULT_TEMPLATES
    # resolved when the experiment is loaded: a registered dataset's curated names; a custom folder's own names
    from types import SimpleNamespace

    from vl2v.experiment.setup import with_prompt_names

    exp = SimpleNamespace(data=SimpleNamespace(classes=["bird", "bug", "marine"], all_classes=["bird", "bug", "marine"]), dataset_name="OfflinePACS")
    assert with_prompt_names(cfg, exp).train.class_names == ("bird", "insect", "sea creature")
    (tmp_path / "folder" / "art").mkdir(parents=True)
    custom = config_from_args(train_parser().parse_args(["--data", str(tmp_path / "folder")]))
    assert with_prompt_names(custom, exp).train.class_names is None


def test_curated_and_classnames_file_override(tmp_path):
    classes = ["bird", "bug", "marine"]
    assert resolve_class_names(classes, "curated", "OfflinePACS") == ["bird", "insect", "sea creature"]
    js = tmp_path / "names.json"
    js.write_text(json.dumps({"bug": "beetle"}))
    assert resolve_class_names(classes, "curated", "OfflinePACS", js) == ["bird", "beetle", "sea creature"]
    assert resolve_class_names(classes, "folder", None, js) == ["bird", "beetle", "marine"]
    txt = tmp_path / "names.txt"
    txt.write_text("songbird\ninsect\nfish\n")
    assert resolve_class_names(classes, "folder", None, txt) == ["songbird", "insect", "fish"]
    txt.write_text("one\ntwo\n")
    with pytest.raises(ValueError, match="2 names for 3 classes"):
        resolve_class_names(classes, file=txt)
    js.write_text(json.dumps({"cat": "kitty"}))
    with pytest.raises(ValueError, match="does not have"):
        resolve_class_names(classes, file=js)
    with pytest.raises(ValueError, match="no curated class names"):
        resolve_class_names(classes, "curated", "my_folder")


def test_classnames_file_reaches_the_run_config(image_folder, tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"cat": "kitten", "horse": "pony"}))
    out = tmp_path / "o"
    rc = main(["train", "--data", str(image_folder), "--algorithm", "zeroshot", "--teacher", "tiny-test",
               "--store", "memory", "--target", "0", "--classnames", str(names), "--templates", "rise",
               "--out", str(out)])
    assert rc == 0
    run = next(out.glob("zeroshot/target-0-*/seed0"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["prompts"]["class_names"] == ["kitten", "dog", "pony"]
    assert cfg["prompts"]["templates"] == list(template_set("rise"))
    assert json.loads((out / "experiment.json").read_text())["config"]["train"]["class_names"] == ["kitten", "dog", "pony"]
