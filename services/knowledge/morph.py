"""Korean morphology: kiwipiepy's analyser (offline model in `kiwipiepy-model`), loaded once per process.

People type "버릴라면", "버리는법좀", "쇼파버릴라면", "음쓰 어디다 버려": the analyser gives each
word its part of speech and each verb its lemma (버리/VV for all of them), so the chat routes a
question on what its words are (a verb of disposal, a noun that names a bin, a question word)
and finds the item it asks about (the nouns), instead of on substrings anywhere in the text.

Loading the model is the analyser's one large cost, in CPU and memory (docs/benchmarks.md,
"Korean morphology"); `analyser()` pays it once per process, and the chat service calls `warm()`
at start so no question waits for it. The multi-word dictionary is not loaded: it names proper
nouns of news text, not household items, and doubles the load cost. The everyday words of the
knowledge base (synonyms.yaml keys such as 음쓰, 쇼파, 뽁뽁이) are added as nouns, so the
analyser keeps them whole instead of reading "음쓰" as an interjection and a verb.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from importlib import resources

import yaml

from . import turn

#: Parts of speech (Sejong tags, as kiwi names them) that can be part of an item's name.
NOUN_TAGS = frozenset({"NNG", "NNP", "NR", "SL", "SH", "XR"})
#: Tags that may sit inside a compound noun ("폐/XPN 건전지", "플라스틱/NNG 류/XSN").
COMPOUND_TAGS = NOUN_TAGS | {"XPN", "XSN"}
PREDICATE_TAGS = frozenset({"VV", "VA", "VX", "VCP", "VCN", "VV-I", "VA-I", "VV-R", "VA-R", "VX-I", "VX-R"})
DERIVING = frozenset({"XSV", "XSA", "XSV-I", "XSA-I", "XSV-R", "XSA-R"})  # 분리수거/NNG + 하/XSV → 분리수거하다

#: Chat spellings the model does not know, rewritten before the analysis (whole words only).
_CHAT_SPELLINGS = (
    (re.compile(r"어케|어캐|어떡케|어뜨케"), "어떻게 "),
    (re.compile(r"(?<![가-힣])걍(?![가-힣])"), "그냥"),
    (re.compile(r"ㄱㄴ(?![가-힣])"), "가능"),
    # "버릴라면", "할라면": the model reads a glued "-ㄹ라면" as the noun 라면 (ramen); "-ㄹ려면" it reads as the ending
    (
        re.compile(r"(?<=[가-힣])라면(?=$|[^가-힣])"),
        lambda m: "려면" if (ord(m.string[m.start() - 1]) - 0xAC00) % 28 == 8 else "라면",
    ),
)

_lock = threading.Lock()
_kiwi = None
_user_words: set[str] = set()
_names: tuple[str, ...] = ()  # names of someone, in the order learned (add_names)
LOAD: dict[str, float] = {}  # wall and CPU seconds the model took to load in this process


def analyser():
    """The process's Kiwi instance, loaded on first use (thread-safe), knowing the knowledge
    base's everyday words as nouns."""
    global _kiwi
    with _lock:
        if _kiwi is None:
            from kiwipiepy import Kiwi

            wall, cpu = time.perf_counter(), time.process_time()
            kiwi = Kiwi(load_multi_dict=False)
            named, found = knowledge_nouns()
            # all words are read before any is added: an analysis after an addition rebuilds the
            # dictionary (~0.5 s each)
            skip = {
                w
                for w, tokens in zip(named, kiwi.tokenize(named))
                if len(tokens) == 2 and tokens[0].tag.startswith(("VV", "VA")) and tokens[1].tag == "ETM"
            }
            # words taken from the rules' item lists are added only when they are nouns as written
            # ("가위" read as an adverb), not a noun with its particle ("폐기물로")
            skip |= {
                w
                for w, tokens in zip(found, kiwi.tokenize(found))
                if any(t.tag.startswith(("J", "E", "V", "X")) for t in tokens)
            }
            for word in dict.fromkeys(named + found):
                if word not in skip:  # "깨진" is a modifier, not a noun
                    kiwi.add_user_word(word, "NNG", 0.0)
            kiwi.tokenize("준비")  # the first call finishes lazy initialisation
            LOAD.update(wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu)
            _kiwi = kiwi
        return _kiwi


def knowledge_nouns() -> tuple[list[str], list[str]]:
    """(the words of synonyms.yaml and lexicon.yaml that are nouns of one word — "음쓰", "쇼파",
    "분리수거" — and the names learned by `add_names`; the one-word items of the rules' item lists)."""
    from .kb import lexicon, load, normalise

    lex, base = lexicon(), load()
    named = [k.lstrip("^=") for k in base.synonyms] + [
        *lex["destinations"],
        *lex["bins"],
        *lex["places"],
        *lex["parts"],
        *lex.get("nouns", []),
    ]
    named += list(_names)
    bulk = yaml.safe_load((resources.files(__package__) / "bulk_waste.yaml").read_text(encoding="utf-8"))["items"]
    named += [w for name, others in bulk.items() for w in (name, *(others or ()))]
    found = [
        w
        for p in base.passages
        if p.kind in ("scope", "exception")
        for w in re.split(r"[^가-힣]+", p.names)
        if len(w) >= 2
    ]

    def keep(words: list[str]) -> list[str]:
        return sorted({w for w in words if w and " " not in w and normalise(w) == w and not w.isascii()})

    return keep(named), [w for w in keep(found) if w not in set(named)]


def add_names(names: list[str]) -> None:
    """Words that name someone (chat: the Eco² characters, as CharacterService lists them): the
    analyser keeps each whole as a noun, and `names()` lists them. Names given after the model
    loaded are added to it (its dictionary is rebuilt at the next analysis)."""
    global _names
    with _lock:
        new = [n for n in dict.fromkeys(names) if n and n not in _names]
        if not new:
            return
        _names = (*_names, *new)
        if _kiwi is not None:
            for word in new:
                _kiwi.add_user_word(word, "NNG", 0.0)


def names() -> tuple[str, ...]:
    """The names `add_names` learned, in that order."""
    return _names


def warm() -> dict[str, float]:
    """Load the model now (a service's start) rather than in its first question; the load cost."""
    analyser()
    _typo_index()
    return dict(LOAD)


@dataclass(frozen=True, slots=True)
class Token:
    form: str
    tag: str
    start: int
    end: int

    @property
    def lemma(self) -> str:
        """Verbs and adjectives in their dictionary form ("버리" → "버리다"), anything else as written."""
        return self.form + "다" if self.tag in PREDICATE_TAGS else self.form


@dataclass(frozen=True)
class Analysis:
    text: str
    tokens: tuple[Token, ...]

    @cached_property
    def lemmas(self) -> frozenset[str]:
        """Every token's lemma, plus noun + 하다/되다 verbs as one word ("분리수거하다", "재활용되다")."""
        out = {t.lemma for t in self.tokens}
        for prev, tok in zip(self.tokens, self.tokens[1:]):
            if tok.tag in DERIVING and prev.tag in NOUN_TAGS:
                out.add(prev.form + tok.form + "다")
        for verb, ending, aux in zip(self.tokens, self.tokens[1:], self.tokens[2:]):
            if verb.tag.startswith("VV") and ending.tag == "EC" and aux.tag.startswith("VX"):
                out.add(verb.form + aux.form + "다")  # 내/VV 어/EC 놓/VX → 내놓다
        return frozenset(out)

    @cached_property
    def nouns(self) -> tuple[str, ...]:
        return tuple(t.form for t in self.tokens if t.tag in NOUN_TAGS)

    @cached_property
    def phrases(self) -> tuple[tuple[Token, ...], ...]:
        """Runs of noun-like tokens with nothing but spaces between them ("캔 수거함", "폐건전지",
        "귤 껍질"): the candidate names of items, bins and places, in text order."""
        runs: list[list[Token]] = []
        previous: Token | None = None
        for tok in self.tokens:
            if tok.tag in COMPOUND_TAGS:
                joined = (
                    previous is not None
                    and previous.tag in COMPOUND_TAGS
                    and not self.text[previous.end : tok.start].strip()
                )
                if joined:
                    runs[-1].append(tok)
                else:
                    runs.append([tok])
            previous = tok
        return tuple(tuple(r) for r in runs)

    def has(self, *lemmas: str) -> bool:
        return any(lemma in self.lemmas for lemma in lemmas)

    def tags(self, *tags: str) -> list[Token]:
        return [t for t in self.tokens if t.tag in tags]

    def after(self, tok: Token) -> Token | None:
        i = self.tokens.index(tok)
        return self.tokens[i + 1] if i + 1 < len(self.tokens) else None

    @property
    def is_question(self) -> bool:
        return (
            "?" in self.text
            or "？" in self.text
            or any(t.tag == "EF" and t.form in QUESTION_ENDINGS or t.form in WH_WORDS for t in self.tokens)
        )


#: Sentence endings that can only ask ("되나요", "할까", "버리니"); "-어", "-아요" also state,
#: so without a "?" or a question word they do not make a question.
QUESTION_ENDINGS = frozenset(
    {
        "나요",
        "까",
        "을까",
        "ᆯ까",
        "을까요",
        "ᆯ까요",
        "니",
        "냐",
        "나",
        "는지",
        "ᆫ가요",
        "은가요",
        "ᆫ가",
        "은가",
        "는가",
        "래",
        "ᆯ래",
        "남",
        "냐고",
        "는지요",
    }
)
WH_WORDS = frozenset(
    {
        "어떻게",
        "어디",
        "언제",
        "뭐",
        "무엇",
        "얼마",
        "어느",
        "무슨",
        "왜",
        "누구",
        "몇",
        "어떤",
        "어딨",
        "어떻",
        "어떡하",
        "어쩌",
    }
)


def normalise_chat(text: str) -> str:
    for pattern, repl in _CHAT_SPELLINGS:
        text = pattern.sub(repl, text)
    return correct_typos(text)


#: Above this score (kiwi's log-probability of a token) a noun is one the analyser knows; an unknown
#: spelling gets a guessed noun far below it ("뱡", "냉장교").
KNOWN_SCORE = -15.0
#: The words `correct_typos` checks: three syllables or more.
_HANGUL_WORD = re.compile(r"[가-힣]{3,}")
#: What may follow a misspelt item in one word ("건전치는", "페트뱡을"): particles, or nothing.
_AFTER_ITEM = re.compile(r"(은|는|이|가|을|를|도|와|과|랑|이랑|하고|에|에서|으로|로|만|요|임|야|이야|인가|)$")


def _jamo(word: str) -> tuple[int, ...]:
    out: list[int] = []
    for ch in word:
        code = ord(ch) - 0xAC00
        out += [code // 588, (code % 588) // 28, code % 28]
    return tuple(out)


@functools.cache
def _typo_index() -> tuple[frozenset[str], dict[tuple, set[str]]]:
    """The knowledge base's item words of three syllables or more, and for each the keys that a
    spelling one letter (자모) away shares with it."""
    from .kb import lexicon, load

    # the items' words only: a name is no item to respell towards ("라이터" is no 라이티)
    lex, base = lexicon(), load()
    bulk = yaml.safe_load((resources.files(__package__) / "bulk_waste.yaml").read_text(encoding="utf-8"))["items"]
    vocabulary = [k.lstrip("^=") for k in base.synonyms] + [*lex["destinations"], *lex["bins"], *lex["parts"]]
    vocabulary += [w for name, others in bulk.items() for w in (name, *(others or ()))]
    vocabulary += [
        w for p in base.passages if p.kind in ("scope", "exception", "detail") for w in re.split(r"[^가-힣]+", p.names)
    ]
    words = frozenset(w for w in vocabulary if len(w) >= 3 and re.fullmatch(r"[가-힣]+", w))
    index: dict[tuple, set[str]] = {}
    for w in words:
        j = _jamo(w)
        for i in range(len(j)):
            index.setdefault((i, j[:i] + (-1,) + j[i + 1 :]), set()).add(w)
    return words, index


def correct_typos(text: str) -> str:
    """Item words misspelt by one letter (자모) of a word the knowledge base knows, three
    syllables or more, respelt ("페트뱡" → 페트병, "건전치" → 건전지, "알루미늄켄" → 알루미늄캔):
    the analyser would otherwise split them into other words. Only when one known word is that
    close, and the text's word is not itself known."""
    words, index = _typo_index()
    kiwi = analyser()

    def fix(m: re.Match) -> str:
        w = m.group()
        return w if w in words else turn.once("spellings", w, respell)

    def respell(w: str) -> str:
        with _lock:
            tokens = kiwi.tokenize(w)
        if all(t.score > KNOWN_SCORE and (t.tag in COMPOUND_TAGS or t.tag.startswith("J")) for t in tokens):
            return w  # words the analyser knows, with their particles ("종이로", "청소과", "라이터")
        for cut in range(len(w), 2, -1):
            head, rest = w[:cut], w[cut:]
            if head in words:
                return w
            if not _AFTER_ITEM.fullmatch(rest):
                continue
            j = _jamo(head)
            near = set().union(*(index.get((i, j[:i] + (-1,) + j[i + 1 :]), set()) for i in range(len(j))))
            if len(near) == 1:
                return next(iter(near)) + rest
        return w

    return _HANGUL_WORD.sub(fix, text)


def analyse(text: str) -> Analysis:
    """The text's tokens (after rewriting chat spellings the model does not know); once per text
    within a turn (turn.one_turn)."""
    return turn.once("analyses", text, _analysed)


def _analysed(text: str) -> Analysis:
    clean = normalise_chat(text)
    kiwi = analyser()
    with _lock:  # one Kiwi is not documented as thread-safe; the chat calls it from one event loop anyway
        tokens = kiwi.tokenize(clean)
    return Analysis(clean, tuple(Token(t.form, t.tag, t.start, t.start + t.len) for t in tokens))
