"""English questions: read as the Korean question they ask, answered from the same rules.

"how do I throw away a glass bottle?" → "유리병 어떻게 버려?" (knowledge/english.yaml: the items
and what is asked); the answer then says, in English, which items it understood and that the
rules it quotes are the Korean ones. A question with no item or request it knows is left as it
is, and the answer says it cannot answer it in English.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class Translation:
    korean: str  # the question as the Korean reader understands it ("" when nothing was recognised)
    terms: tuple[tuple[str, str], ...]  # (English, Korean) of each item or request recognised


@cache
def vocabulary() -> dict:
    return yaml.safe_load((resources.files("eco2.services.knowledge") / "english.yaml").read_text(encoding="utf-8"))


def _find(text: str, phrases: dict[str, str], taken: list | None = None) -> list[tuple[int, int, str, str]]:
    """Non-overlapping phrase matches on word boundaries, longest first: (start, end, en, ko);
    spans in `taken` are already claimed."""
    claimed = list(taken or [])
    taken = []
    for en in sorted(phrases, key=len, reverse=True):
        for m in re.finditer(rf"(?<![a-z]){re.escape(en)}(?:e?s)?(?![a-z])", text):
            if not any(s < m.end() and m.start() < e for s, e, _, _ in taken + claimed):
                taken.append((m.start(), m.end(), en, str(phrases[en])))
    return sorted(taken)


def translate(text: str) -> Translation:
    v = vocabulary()
    low = " ".join(text.lower().split())
    asks = _find(low, v["asks"])
    terms = _find(low, v["terms"], asks)
    if not terms:
        return Translation("", ())
    kos = [ko for *_, ko in terms]
    yes_no = re.match(r"(is|are|can|does|do|should)\b", low) is not None
    words = [
        ko + ("로" if ko in DESTINATIONS and ko != "재활용" and yes_no and asks and asks[0][3] == "버려도 돼?" else "")
        for ko in kos
        if ko != "재활용"
    ]
    words = [w for w in words if w not in REQUESTS] + [
        w for w in words if w in REQUESTS
    ]  # the items first, then what is asked of them
    if "재활용" in kos and yes_no:
        ask = "재활용 돼?"
    elif yes_no and any(ko in DESTINATIONS for ko in kos):
        ask = "맞아?" if not any(a[3] == "버려도 돼?" for a in asks) else "버려도 돼?"
    elif asks:
        ask = asks[0][3]
    else:
        ask = (
            ""
            if any(ko in ("시세", "얼마", "날씨", "수수료", "과태료", "전화번호", "수거 요일") for ko in kos)
            else "어떻게 버려?"
        )
    return Translation(" ".join([*dict.fromkeys(words), ask]).strip(), tuple((en, ko) for _, _, en, ko in terms))


#: Korean words of english.yaml that ask something of the items ("price", "nearest").
REQUESTS = frozenset({"시세", "근처", "수수료", "스티커", "날씨", "수거 요일", "언제", "얼마", "전화번호", "과태료"})


def asks_disposal(text: str) -> bool:
    """The English question asks how or where to throw something away (english.yaml asks), even
    when it names no item the vocabulary knows ("where do I throw away cooking oil?")."""
    return bool(
        _find(" ".join(text.lower().split()), {k: v for k, v in vocabulary()["asks"].items() if "버려" in str(v)})
    )


#: Korean words of english.yaml that name where an item goes ("Is it food waste?").
DESTINATIONS = frozenset({"음식물", "일반쓰레기", "재활용", "플라스틱", "종이", "유리병", "캔", "비닐"})


def category(file: str) -> str:
    return str(vocabulary()["categories"].get(file, ""))
