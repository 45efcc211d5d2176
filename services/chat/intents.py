"""Rule-based intent classification with multi-intent decomposition (Korean).

A message is split into clauses ("?", "그리고", "또", "...도 알려줘"); each clause gets the
intents whose cue words it contains; waste questions are also recognised by a retrieval hit
on the disposal rules. The result keeps the message order and one sub-query per intent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .kb import KnowledgeBase

WASTE, CHARACTER, LOCATION, BULK_WASTE, RECYCLABLE_PRICE = "waste", "character", "location", "bulk_waste", "recyclable_price"
COLLECTION_POINT, WEATHER, IMAGE_GENERATION, WEB_SEARCH, GENERAL = "collection_point", "weather", "image_generation", "web_search", "general"
ALL_INTENTS = (WASTE, CHARACTER, LOCATION, BULK_WASTE, RECYCLABLE_PRICE, COLLECTION_POINT, WEATHER, IMAGE_GENERATION, WEB_SEARCH, GENERAL)

CUES: dict[str, tuple[str, ...]] = {
    COLLECTION_POINT: ("수거함", "수거 함", "폐건전지함", "폐형광등", "의류수거", "수거함이"),
    LOCATION: ("재활용센터", "근처", "주변", "가까운", "어디서", "어디에", "위치", "재활용 센터", "제로웨이스트", "리필"),
    BULK_WASTE: ("대형폐기물", "대형 폐기물", "스티커", "수수료", "가구", "소파", "침대", "매트리스", "장롱", "냉장고 버"),
    RECYCLABLE_PRICE: ("시세", "가격", "얼마에", "얼마야", "매입", "kg당", "킬로당", "원에"),
    WEATHER: ("날씨", "비 와", "비와", "기온", "눈 와", "우산", "미세먼지"),
    IMAGE_GENERATION: ("그려", "그림", "이미지 만들", "이미지 생성", "만들어줘 이미지", "사진 만들"),
    WEB_SEARCH: ("검색", "최신", "뉴스", "찾아봐", "찾아 봐", "인터넷"),
    WASTE: ("분리", "버려", "버리", "배출", "분리수거", "재활용", "쓰레기", "어떻게 버"),
}

_SPLIT = re.compile(r"(?<=[?？!.。])\s+|\s*(?:그리고|그리고요|또한|또|아울러)\s+|(?<=[고요])\s*,\s*")
#: Ask-for-more endings that start a new request: "근처 수거함도 알려줘".
_ALSO = re.compile(r"\S+도\s+(?:알려|찾아|보여)")


@dataclass(frozen=True, slots=True)
class Classification:
    intents: tuple[str, ...]
    queries: dict[str, str]
    character_names: tuple[str, ...]
    confidence: float


def clauses(message: str) -> list[str]:
    parts = [p.strip() for p in _SPLIT.split(message) if p and p.strip()]
    return parts or [message.strip()]


def classify(message: str, kb: KnowledgeBase) -> Classification:
    intents: list[str] = []
    queries: dict[str, str] = {}

    def add(intent: str, clause: str) -> None:
        if intent not in intents:
            intents.append(intent)
            queries[intent] = clause
        else:
            queries[intent] = f"{queries[intent]} {clause}"

    names = tuple(c["name"] for c in kb.characters if c["name"] in message)
    for clause in clauses(message):
        hits = [i for i, cues in CUES.items() if any(cue in clause for cue in cues)]
        if COLLECTION_POINT in hits and LOCATION in hits:
            hits.remove(LOCATION)  # "근처 수거함" is a collection point, not any place
        if BULK_WASTE in hits and WASTE in hits:
            hits.remove(WASTE)
        strong_waste = any(cue in clause for cue in ("분리", "버려", "버리", "배출", "내놔", "내놓"))
        if LOCATION in hits and strong_waste and not any(cue in clause for cue in ("근처", "주변", "가까운", "센터")):
            hits.remove(LOCATION)  # "어디에 버려?" asks for the rule, not for a place
        if WASTE in hits and not strong_waste and len(hits) > 1:
            hits.remove(WASTE)  # "재활용센터", "재활용 뉴스": the place or the search is the question
        if not hits and kb.search(clause):
            hits.append(WASTE)
        named = any(n in clause for n in names)
        if IMAGE_GENERATION not in hits and ("캐릭터" in clause or (named and not hits)):
            hits.append(CHARACTER)
        for intent in hits:
            add(intent, clause)
    if not intents:
        add(GENERAL, message)
        return Classification(tuple(intents), queries, names, 0.4)
    return Classification(tuple(intents), queries, names, 0.9 if len(intents) == 1 else 0.8)
