"""Labelling rules on hand-made entries, and the consistency of the shipped rule files."""

from __future__ import annotations

import re

import pytest

from vl2v.data.offline import labels
from vl2v.data.offline.labels import Decision

RULES = {
    "classes": ["bird", "fruit", "marine", "mammal", "vehicle", "vegetable"],
    "emoji": {
        "subgroups": {"animal-bird": "bird", "food-fruit": "fruit", "transport-ground": "vehicle"},
        "drop": {"1FAB6": "feather", "1F6D1": "stop sign"},
    },
    "vocabulary": {
        "bird": ["duck", "owl"],
        "fruit": ["apple", "cherries", "tomato"],
        "marine": ["dolphin"],
        "mammal": ["cat", "polar bear"],
        "vegetable": ["carrot", "avocado"],
        "vehicle": ["car", "fire engine", "bus"],
    },
    "overrides": {"tomato": "fruit", "avocado": "vegetable", "dolphin": "marine"},
}
SOURCE = {
    "folders": {"animals": "concepts", "animals/birds": "bird", "animals/mammals": "mammal",
                "animals/fantasy": None, "food/fruit": "fruit", "food/vegetables": "vegetable",
                "transport": "vehicle"},
    "skip_dirs": ["cartoon"],
    "negative": ["sign", "juice box", "bw"],
    "require_vocabulary": ["vehicle"],
}


@pytest.mark.parametrize("stem,norm", [
    ("Strawberry2", " strawberry 2 "),
    ("guitar_electric-bass", " guitar electric bass "),
    ("walnutBoat", " walnut boat "),
    ("fish10", " fish 10 "),
])
def test_normalise_name(stem, norm):
    assert labels.normalise_name(stem) == norm


def test_word_matches_whole_tokens_plural_and_phrases():
    n = labels.normalise_name
    assert labels.word_matches("bus", n("buses_and_bikes"))
    assert labels.word_matches("car", n("red_cars_01"))
    assert not labels.word_matches("car", n("cartoon_cat"))
    assert not labels.word_matches("cat", n("catfish"))
    assert labels.word_matches("fire engine", n("fire_engine_romus"))
    assert not labels.word_matches("fire engine", n("engine_fire"))


@pytest.mark.parametrize("path,cls,why", [
    ("animals/birds/duck_01.svg", "bird", "folder"),
    ("animals/birds/cartoon/duck.svg", None, "skipped folder"),
    ("animals/mammals/dolphin_jumping.svg", "marine", "override"),  # Unicode: dolphin is marine
    ("animals/fantasy/dragon.svg", None, "excluded"),
    ("animals/owl_on_branch.svg", "bird", "concept word 'owl'"),
    ("animals/polar_bear.svg", "mammal", "concept word 'polar bear'"),
    ("animals/duck_and_cat.svg", None, "ambiguous"),
    ("animals/rock.svg", None, "no concept word"),
    ("food/fruit/apple_juice_box.svg", None, "negative word 'juice box'"),
    ("food/fruit/apple_bw.svg", None, "negative word 'bw'"),
    ("food/fruit/avocado.png", "vegetable", "override"),
    ("food/vegetables/tomato.png", "fruit", "override"),
    ("transport/fire_engine.svg", "vehicle", "word 'fire engine'"),
    ("transport/bus_sign.svg", None, "negative word 'sign'"),
    ("transport/tunnel.svg", None, "no vehicle word"),
    ("misc/car.svg", None, "no folder rule"),
])
def test_classify_file(path, cls, why):
    dec = labels.classify_file(RULES, SOURCE, path)
    assert dec.cls == cls, dec
    assert why in dec.reason


def test_emoji_subgroups_and_drop_list():
    assert labels.emoji_class(RULES, "1F426", "animal-bird") == Decision("bird", "subgroup animal-bird")
    assert labels.emoji_class(RULES, "1fab6", "animal-bird").cls is None  # case-insensitive drop
    assert "stop sign" in labels.emoji_class(RULES, "1F6D1", "transport-ground").reason
    assert labels.emoji_class(RULES, "1F600", "face-smiling").cls is None


def test_curation_parse_and_apply():
    text = "id\taction\treason\n# comment\nocal-x\texclude\troad sign\nocal-y\tfruit\tit is a pear\n\n"
    cur = labels.parse_curation(text, RULES["classes"])
    assert set(cur) == {"ocal-x", "ocal-y"}
    kept = Decision("bird", "folder")
    assert labels.apply_curation(cur, "ocal-x", kept).cls is None
    assert "road sign" in labels.apply_curation(cur, "ocal-x", kept).reason
    assert labels.apply_curation(cur, "ocal-y", kept).cls == "fruit"
    assert labels.apply_curation(cur, "other", kept) == kept
    with pytest.raises(labels.RulesError, match="neither"):
        labels.parse_curation("a\tplanet\twhy\n", RULES["classes"])
    with pytest.raises(labels.RulesError, match="twice"):
        labels.parse_curation("a\texclude\n a\texclude\n".replace(" ", ""), RULES["classes"])


def test_shipped_rules_and_curation_are_consistent():
    rules = labels.load_rules()
    classes = rules["classes"]
    assert sorted(classes) == classes and len(classes) == 9
    cur = labels.load_curation(classes=classes)
    assert len(cur) > 50 and all(re.fullmatch(r"[a-z0-9-]+", k) for k in cur)
    for cp in rules["emoji"]["drop"]:
        assert re.fullmatch(r"[0-9A-F]{4,5}(-[0-9A-F]{4,5})*", cp), cp
    for key, src in rules["sources"].items():
        for rule in src.get("folders", {}).values():
            assert rule in (None, "concepts", *classes), (key, rule)
    # The Unicode facts the doc names: tomato is a fruit, avocado a vegetable.
    assert labels.classify_file(rules, rules["sources"]["tuxpaint"], "food/vegetables/tomato.png").cls == "fruit"
    assert labels.classify_file(rules, rules["sources"]["tuxpaint"], "food/fruit/avocado.png").cls == "vegetable"
    assert labels.classify_file(rules, rules["sources"]["tuxpaint"], "food/fruit/cartoon/apple.png").cls is None
    assert labels.classify_file(rules, rules["sources"]["openclipart"], "transportation/bus_lane.svg").cls is None
