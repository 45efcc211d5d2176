"""The shipped knowledge base matches the reference facts, and Korean retrieval finds them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eco2.services.chat import intents
from eco2.services.knowledge import kb


def test_rules_match_the_reference_data(shared_dir):
    ref = shared_dir / "reference-data/eco2"
    documents = json.loads((kb.resources.files("eco2.services.knowledge") / "rules.json").read_text(encoding="utf-8"))[
        "documents"
    ]
    shipped = {d["file"]: {k: v for k, v in d.items() if k != "file"} for d in documents}
    for path in ref.glob("*.json"):
        assert shipped[path.stem] == json.loads(path.read_text(encoding="utf-8")), path.stem
    assert len(shipped) == 18


@pytest.mark.parametrize(
    "query,file",
    [
        ("이 페트병 어떻게 분리해?", "재활용폐기물_무색페트병"),
        ("건전지 버리는 법", "재활용폐기물_전지"),
        ("우유팩은 어떻게 버려?", "재활용폐기물_종이팩"),
        ("스티로폼 박스", "재활용폐기물_발포합성수지"),
        ("치킨 뼈는 음식물이야?", "음식물류폐기물"),
        ("형광등 교체했어", "재활용폐기물_조명제품"),
    ],
)
def test_korean_ngram_retrieval(query, file):
    hits = kb.load().search(query)
    assert hits and hits[0].rule.file == file


def test_nothing_retrieved_for_unrelated_text():
    assert kb.load().search("오늘 기분이 좋아") == []


def test_multi_intent_decomposition():
    c = intents.classify("이 페트병 어떻게 분리해? 근처 수거함도 알려줘", kb.load())
    assert c.intents == ("waste", "collection_point")
    assert c.queries["waste"] == "이 페트병 어떻게 분리해?" and "수거함" in c.queries["collection_point"]


def test_the_lexicon_names_only_rule_files_and_price_items_that_exist():
    """lexicon.yaml's destinations and situations name rule files, its price_words the price
    survey's items: a typo there would silently route nothing."""
    root = Path(kb.__file__).parent
    lexicon = yaml.safe_load((root / "lexicon.yaml").read_text(encoding="utf-8"))
    files = {d["file"] for d in json.loads((root / "rules.json").read_text(encoding="utf-8"))["documents"]}
    named = set(lexicon["destinations"].values()) | set(lexicon["situations"])
    assert named - {"재활용"} <= files, sorted(named - {"재활용"} - files)
    prices = {p.id for p in kb.load().prices}
    wanted = {i for ids in lexicon["price_words"].values() for i in ids}
    assert wanted <= prices, sorted(wanted - prices)
