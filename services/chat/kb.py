"""The chat knowledge base: disposal rules, taxonomy, prices, characters, and Korean retrieval.

Retrieval is lexical over character n-grams (bigrams + trigrams, BM25 weights): Korean words
carry particles and compounds ("페트병은", "무색페트병"), which whole-word matching misses and
n-grams catch without a morphological analyser. See docs/adr/0060-chat-retrieval.md.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import yaml

_NON_WORD = re.compile(r"[^0-9a-zA-Z가-힣]+")

#: Everyday words → the vocabulary of the rules (added to the query, never replacing it).
ALIASES: dict[str, str] = {
    "투명": "무색", "생수병": "무색페트병", "물병": "무색페트병", "페트병": "무색페트병",
    "건전지": "전지 배터리", "배터리": "전지", "형광등": "조명제품 형광램프", "전구": "조명제품",
    "스티로폼": "발포합성수지", "옷": "의류", "헌옷": "의류 원단", "캔": "금속류 캔류", "고철": "금속류",
    "우유팩": "종이팩", "택배박스": "종이 골판지", "박스": "골판지", "상자": "골판지", "비닐봉지": "비닐류",
    "음식물": "음식물류폐기물", "가구": "대형폐기물", "소파": "대형폐기물", "냉장고": "전기전자제품 대형",
    "약": "의약품 생활계유해폐기물", "폐의약품": "의약품 생활계유해폐기물", "깨진": "불연성", "유리": "유리병",
    "플라스틱": "플라스틱류", "컵라면": "발포합성수지",
}


def normalise(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


def ngrams(text: str, sizes: tuple[int, ...] = (2, 3)) -> list[str]:
    out: list[str] = []
    for word in normalise(text).split():
        if len(word) == 1:
            out.append(word)
        for n in sizes:
            out.extend(word[i : i + n] for i in range(len(word) - n + 1))
    return out


def expand(query: str) -> str:
    extra = [v for k, v in ALIASES.items() if k in query]
    return " ".join([query, *extra])


@dataclass(frozen=True, slots=True)
class RuleDoc:
    """One citable section of a disposal-rule file."""

    source_id: str  # "rule:재활용폐기물_무색페트병#배출방법_공통"
    file: str
    name: str  # "무색페트병"
    section: str
    title: str
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleFile:
    file: str
    key: str
    category: str
    name: str
    targets: tuple[str, ...]
    docs: tuple[RuleDoc, ...]
    index_text: str


@dataclass(frozen=True, slots=True)
class Hit:
    rule: RuleFile
    score: float


@dataclass(frozen=True, slots=True)
class PriceItem:
    id: str
    name: str
    category: str
    synonyms: tuple[str, ...]
    prices: dict[str, int]
    form: str = ""


@dataclass
class KnowledgeBase:
    rules: list[RuleFile]
    taxonomy: dict
    prices: list[PriceItem]
    price_info: dict
    regions: dict[str, str]
    characters: list[dict]
    _postings: dict[str, list[tuple[int, int]]] = field(default_factory=dict, repr=False)
    _lengths: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, rule in enumerate(self.rules):
            counts = Counter(ngrams(rule.index_text))
            self._lengths.append(sum(counts.values()))
            for gram, tf in counts.items():
                postings[gram].append((i, tf))
        self._postings = dict(postings)
        self._avg = sum(self._lengths) / max(1, len(self._lengths))

    def search(self, query: str, *, limit: int = 3, min_score: float = 2.0) -> list[Hit]:
        """BM25 over character n-grams of each rule file's names, items and descriptions."""
        grams = Counter(ngrams(expand(query)))
        n = len(self.rules)
        scores: dict[int, float] = defaultdict(float)
        for gram, qtf in grams.items():
            posting = self._postings.get(gram)
            if not posting:
                continue
            idf = math.log(1 + (n - len(posting) + 0.5) / (len(posting) + 0.5))
            for i, tf in posting:
                norm = tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * self._lengths[i] / self._avg))
                scores[i] += idf * norm * min(qtf, 2)
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        if not ranked:
            return []
        best = ranked[0][1]
        return [Hit(self.rules[i], s) for i, s in ranked[:limit] if s >= min_score and s >= best * 0.5]

    def by_source(self, source_id: str) -> RuleDoc | None:
        for rule in self.rules:
            for doc in rule.docs:
                if doc.source_id == source_id:
                    return doc
        return None

    def search_prices(self, query: str) -> list[PriceItem]:
        q = normalise(query).replace(" ", "")
        found = [p for p in self.prices if any(normalise(s).replace(" ", "") in q for s in (p.name, *p.synonyms) if s)]
        return found

    def region_of(self, text: str) -> str:
        for rid, name in self.regions.items():
            if name in text:
                return rid
        for word, rid in (("서울", "capital"), ("경기", "capital"), ("인천", "capital"), ("부산", "gyeongnam"), ("대구", "gyeongbuk"), ("광주", "jeonnam"), ("대전", "chungnam")):
            if word in text:
                return rid
        return "nationwide"


def _rule_file(doc: dict, taxonomy: dict) -> RuleFile:
    file, name = doc["file"], doc["이름"]
    sections: list[RuleDoc] = []
    if doc.get("배출방법_공통"):
        sections.append(RuleDoc(f"rule:{file}#배출방법_공통", file, name, "배출방법_공통", f"{name} 배출방법", tuple(doc["배출방법_공통"])))
    for key, lines in (doc.get("배출방법_세부") or {}).items():
        lines = lines if isinstance(lines, list) else [str(lines)]
        sections.append(RuleDoc(f"rule:{file}#배출방법_세부/{key}", file, name, f"배출방법_세부/{key}", f"{name} · {key}", tuple(lines)))
    refused = doc.get("배출불가_품목_안내") or {}
    if refused:
        sections.append(
            RuleDoc(f"rule:{file}#배출불가_품목_안내", file, name, "배출불가_품목_안내", f"{name}: 배출할 수 없는 품목", tuple(f"{k}: {v}" for k, v in refused.items()))
        )
    minors: list[str] = []
    tree = taxonomy.get("item_class_list", {})
    major = tree.get(doc["category"])
    if isinstance(major, dict):
        minors = list(major.get(doc["key"]) or [])
    elif isinstance(major, list):
        minors = list(major)
    items = [i for group in (doc.get("세부_품목") or {}).values() for i in group] + list((doc.get("세부_품목") or {}).keys())
    # The name and key count twice: a question naming the category should find it first.
    index_text = " ".join([name, name, doc["key"], *doc.get("대상_품목", []), *doc.get("대상_설명", []), *items, *minors, *refused.keys()])
    return RuleFile(file, doc["key"], doc["category"], name, tuple(doc.get("대상_품목", [])), tuple(sections), index_text)


@cache
def load() -> KnowledgeBase:
    """The knowledge base shipped in eco2.services.chat.knowledge (read once per process)."""
    root = resources.files(__package__) / "knowledge"
    rules_doc = json.loads((root / "rules.json").read_text(encoding="utf-8"))
    taxonomy = yaml.safe_load((root / "taxonomy.yaml").read_text(encoding="utf-8"))
    prices_doc = yaml.safe_load((root / "prices.yaml").read_text(encoding="utf-8"))
    characters = yaml.safe_load((root / "characters.yaml").read_text(encoding="utf-8"))["characters"]
    rules = [_rule_file(d, taxonomy) for d in rules_doc["documents"]]
    prices = [
        PriceItem(item["id"], item["name"], cat["name"], tuple(item.get("synonyms") or ()), dict(item["prices"]), item.get("form", ""))
        for cat in prices_doc["categories"]
        for item in cat["items"]
    ]
    regions = {r["id"]: r["name"] for r in prices_doc["regions"]}
    return KnowledgeBase(rules, taxonomy, prices, prices_doc["survey_info"], regions, characters)
