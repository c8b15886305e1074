"""智问智搜: find the bundle (一件事) a person means from the words they type.

A citizen does not know that the government calls it 新生儿出生一件事; they type 生孩子要办什么,
生孩紫 (a homophone from the input method), "shz" on a phone, or "baby". The search therefore
matches the query against every phrasing the catalog has of a bundle — its official names, the
everyday words of `data/search_terms.yaml`, the names of its services — four ways, and keeps the
best:

- characters: rapidfuzz's similarity of the query's content words to the phrasing, whole and as a
  part of it (a short query inside a long service name, a long question around a short term);
- sounds: the same over pinyin syllables (pypinyin, tones dropped), so a homophone typo scores as
  the right word;
- typed pinyin and initials: "sheng hai zi", "shenghaizi", "shz";
- English words, for the portal's English side.

The query's content words come from jieba's segmentation with question words and filler dropped
(要, 办, 什么, 怎么, 手续 …), so 生孩子要办什么 is compared as 生孩子. A part-match of a short
string is worth less than a whole one (one shared character says little). A bundle whose words
cover more of the query's telling words gains a little (`COVERAGE_BONUS`: 个体户想转成公司 is 个转企,
not 个体户开业). A bundle is shown from `THRESHOLD` on, or from the lower `EVIDENCE_THRESHOLD` when it
shares a telling whole word with the query (当兵, 毕业生 — not 公司); anything less finds nothing:
nonsense gets an empty answer, not a random bundle.

Everything here is a pure function of the index and the query (`build_index`, `search`): the same
query gives the same answer, ties broken by code. The one piece of state is jieba's dictionary,
which takes about a second to load: it is loaded once per process, lazily, on the first search
(`segmenter()`), behind a lock, and the index is built once per catalog by whoever holds it.
"""
from __future__ import annotations

import logging
import math
import re
import threading
import unicodedata
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Iterable

from rapidfuzz import fuzz, process

from .search_terms import SearchTerms

if TYPE_CHECKING:  # pragma: no cover
    import jieba

    from .model import Catalog

__all__ = ["Entry", "Hit", "SearchIndex", "SearchResult", "build_index", "search", "segmenter",
           "THRESHOLD", "EVIDENCE_THRESHOLD", "MAX_QUERY_LENGTH"]

#: a bundle or service scoring under this (0..100) is not shown; calibrated on search_eval.yaml and
#: on nonsense queries (tests/catalog/test_search.py)
THRESHOLD = 72.0
#: the API refuses longer queries (a question, not a document)
MAX_QUERY_LENGTH = 64
#: what a part-match (the query inside a phrasing, or a phrasing inside the query) is worth of a whole one
PART = 0.95
#: a bundle sharing a telling word with the query (a word of at most `TELLING_DF` bundles' vocabularies:
#: 当兵, 毕业生 — not 公司, 补贴) is shown from this score on: a whole word in common is evidence that a
#: fuzzy score alone is not, and nonsense rarely has one
EVIDENCE_THRESHOLD = 58.0
TELLING_DF = 3
#: a part-match under this counts as 0 (rapidfuzz stops early: most of a search's time otherwise); at
#: most a weak bundle near EVIDENCE_THRESHOLD is lost by it
PART_CUTOFF = 55.0
#: at most this much is added for covering more of the query's words (see `search`)
COVERAGE_BONUS = 10.0
#: how much a kind of phrasing counts: an official name is the surest, a service name says the
#: bundle less surely (a service can be in several), an everyday word in between
WEIGHTS = {"name": 1.0, "term": 0.97, "service": 0.9}

# Question words, filler and generic verbs of how people ask, dropped before matching. Kept short:
# a word that names a thing (材料, 证明, 补贴) stays.
_STOP_ZH = frozenset("""
我 我们 咱 咱们 你 你们 他 她 它 家 家里 自己 要 想 想要 需要 得 该 应该 能 能不能 可以 可不可以 会 怎么
怎么办 咋 咋办 怎样 怎么样 如何 啥 什么 哪些 哪个 哪里 哪儿 哪 去 到 在 办 办理 办事 申请 手续 流程 步骤
一下 请问 问 问下 问一下 了 的 地 吗 呢 吧 啊 呀 哦 嘛 么 个 一个 这 那 这个 那个 有 没有 给 帮 帮忙
是 都 还 也 就 又 再 找 弄 搞 网上 线上 一件事 现在 刚 刚刚 已经 准备 打算 之后 以后 后 时候 需 相关 和 与
及 跟 被 把 让 叫 为 为了 关于 事 事情 东西 多少 多久 几天 谁 所以 因为 然后 要求
""".split())
_STOP_EN = frozenset("""
i me my we our you your a an the to of for in on at is are am be do does did how what which where
when who can could should would will need needs want wants get got apply applying application help
please about with and or it this that there here have has had just now so
""".split())
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaffa-z0-9]+")
_LATIN = re.compile(r"[a-z]+")
_PAREN = re.compile(r"[（(][^）)]*[）)]")


@dataclass(frozen=True)
class Entry:
    """One phrasing that points at a bundle or a service, prepared for every way of matching."""
    text: str                       # folded text: NFKC, lower case
    kind: str                       # "name" | "term" | "service"
    target: str                     # "bundle:<code>" or "service:<id>"
    shown: str                      # the phrasing as written (reported as what matched)
    chars: str                      # its CJK characters and digits, for character matching
    content: str                    # the same without filler words (as a query is compared)
    syllables: tuple[str, ...]      # pinyin syllables, tones dropped
    pinyin: str                     # the syllables joined: "shenghaizi"
    initials: str                   # first letters: "shz"
    words: str                      # Latin words (English phrasings), space separated

    @property
    def weight(self) -> float:
        return WEIGHTS[self.kind]


@dataclass(frozen=True)
class Hit:
    """A bundle or service the query found: its score (0..100) and the phrasing that matched."""
    kind: str          # "bundle" | "service"
    code: str          # bundle code or service id
    score: float
    matched: str


@dataclass(frozen=True)
class SearchResult:
    bundles: tuple[Hit, ...]
    services: tuple[Hit, ...]


@dataclass(frozen=True)
class SearchIndex:
    """Every phrasing of every bundle and service; build it once with `build_index`.

    `words` holds each bundle's vocabulary — jieba's words of two or more characters in all its
    phrasings — and `weight` how telling each word is (inverse document frequency over bundles:
    公司 says little, 个体户 much), for the coverage bonus of `search`.
    """
    entries: tuple[Entry, ...]
    service_bundles: dict[str, tuple[str, ...]]   # service id → the bundles it belongs to
    words: dict[str, frozenset[str]]              # bundle code → its vocabulary
    weight: dict[str, float]                      # word → its weight (unknown words: `unknown_weight`)
    unknown_weight: float
    telling_weight: float                         # the weight of a word in TELLING_DF bundles

    @cached_property
    def sound_codes(self) -> dict[str, str]:
        """Each pinyin syllable of the index as one character (private use area), so sequences of
        sounds compare as strings — rapidfuzz is several times faster on strings than on tuples."""
        syllables = sorted({s for e in self.entries for s in e.syllables})
        return {s: chr(0xE000 + i) for i, s in enumerate(syllables)}

    @cached_property
    def columns(self) -> dict[str, tuple]:
        """The entries' prepared forms column by column, as rapidfuzz's batch functions take them."""
        es = self.entries
        return {"chars": tuple(e.chars for e in es), "chars_len": tuple(len(e.chars) for e in es),
                "content": tuple(e.content for e in es), "content_len": tuple(len(e.content) for e in es),
                "sounds": tuple("".join(self.sound_codes[s] for s in e.syllables) for e in es),
                "syllables_len": tuple(len(e.syllables) for e in es),
                "pinyin": tuple(e.pinyin for e in es), "initials": tuple(e.initials for e in es),
                "words": tuple(e.words for e in es)}


# --- text ----------------------------------------------------------------------------------------

def fold(text: str) -> str:
    """NFKC (full-width letters and digits → ASCII), lower case, whitespace squeezed."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def _syllables(chars: str) -> tuple[str, ...]:
    from pypinyin import lazy_pinyin   # its phrase table costs 0.7 s to import: on the first search, not at every API start

    return tuple(lazy_pinyin(chars, errors="ignore")) if chars else ()


def _chars(text: str) -> str:
    return "".join(ch for ch in text if _CJK.match(ch) or ch.isdigit())


def _entry(text: str, kind: str, target: str) -> Entry:
    folded = fold(text)
    chars = _chars(folded)
    syl = _syllables(chars)
    return Entry(text=folded, kind=kind, target=target, shown=text, chars=chars, content=_content(folded),
                 syllables=syl,
                 pinyin="".join(syl), initials="".join(s[0] for s in syl if s),
                 words=" ".join(_LATIN.findall(folded)) if not chars else "")


def build_index(catalog: Catalog, terms: SearchTerms) -> SearchIndex:
    """Every bundle's names and words and every service's name, prepared for `search`."""
    entries: list[Entry] = []
    service_bundles: dict[str, list[str]] = {}
    for b in sorted(catalog.bundles.values(), key=lambda b: b.code):
        target = f"bundle:{b.code}"
        entries.append(_entry(b.label.zh, "name", target))
        entries.append(_entry(_PAREN.sub("", b.label.en), "name", target))
        for t in terms.of(b.code):
            entries.append(_entry(t.text, "term", target))
        for sid in b.services:
            service_bundles.setdefault(sid, []).append(b.code)
    for s in sorted(catalog.services.values(), key=lambda s: s.id):
        target = f"service:{s.id}"
        names = {s.label.zh, _PAREN.sub("", s.label.zh), _PAREN.sub("", s.label.en)}
        for name in sorted(n for n in names if n.strip()):
            entries.append(_entry(name, "service", target))
    words: dict[str, set[str]] = {}
    for e in entries:
        kind, code = e.target.split(":", 1)
        codes = (code,) if kind == "bundle" else service_bundles.get(code, ())
        vocab = _words(e.chars)
        for c in codes:
            words.setdefault(c, set()).update(vocab)
    n = max(1, len(catalog.bundles))
    df: dict[str, int] = {}
    for vocab in words.values():
        for w in vocab:
            df[w] = df.get(w, 0) + 1
    weight = {w: math.log(1 + n / d) for w, d in df.items()}
    return SearchIndex(tuple(entries), {k: tuple(v) for k, v in service_bundles.items()},
                       {k: frozenset(v) for k, v in words.items()}, weight, math.log(1 + n),
                       math.log(1 + n / TELLING_DF))


def _words(chars: str) -> set[str]:
    """jieba's words (search mode: 工商户 also as 工商, 商户) of two or more characters, filler dropped."""
    if not chars:
        return set()
    return {w for w in segmenter().lcut_for_search(chars) if len(w) >= 2 and w not in _STOP_ZH}


# --- jieba, once -------------------------------------------------------------------------------

_tokenizer: jieba.Tokenizer | None = None
_tokenizer_lock = threading.Lock()


def segmenter() -> jieba.Tokenizer:
    """jieba's tokenizer with its dictionary loaded: the first call takes ~1 s, later ones nothing.

    A tokenizer of our own (not jieba's global one), so nothing else in the process changes what
    it knows; jieba's log lines ("Building prefix dict…") are kept out of ours.
    """
    global _tokenizer
    if _tokenizer is None:
        with _tokenizer_lock:
            if _tokenizer is None:
                import jieba
                jieba.setLogLevel(logging.WARNING)
                tok = jieba.Tokenizer()
                tok.initialize()
                _tokenizer = tok
    return _tokenizer


# --- the query -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """What of a query is compared: its content characters and their sounds, its Latin letters."""
    chars: str
    syllables: tuple[str, ...]
    latin_words: tuple[str, ...]
    latin: str          # the Latin letters run together: typed pinyin or initials


def _content(folded: str) -> str:
    """The CJK characters and digits of a text, jieba's question words and filler dropped — the same
    for a query and for a phrasing of the index, so 个体工商户转型为企业 (为 dropped) still equals itself."""
    out: list[str] = []
    for run in _WORD.findall(folded):
        cjk = _chars(run)
        if cjk:
            out.extend(w for w in segmenter().lcut(cjk) if w not in _STOP_ZH)
    return "".join(out)


def analyse(query: str) -> Query:
    """The query's content: jieba's words minus question words and filler, then split by script."""
    folded = fold(query)
    content = _content(folded)
    latin_words = tuple(w for w in _LATIN.findall(folded) if w not in _STOP_EN)
    return Query(chars=content, syllables=_syllables(content), latin_words=latin_words,
                 latin="".join(_LATIN.findall(folded)))


def _cover(n: int) -> float:
    """What a part-match of a string this long is worth: one shared character says little."""
    return {0: 0.0, 1: 0.55, 2: 0.86, 3: 0.94}.get(n, 1.0)


def _all(query, choices: tuple, scorer, cutoff: float = 1) -> list[float]:
    """`scorer(query, c)` for every choice, in rapidfuzz's C loop (a Python loop was 20x slower);
    under `cutoff` counts as 0 (rapidfuzz then stops early)."""
    out = [0.0] * len(choices)
    if query:
        for _, score, i in process.extract(query, choices, scorer=scorer, limit=None, score_cutoff=cutoff):
            out[i] = score
    return out


def _similar(query, choices: tuple, lengths: tuple[int, ...]) -> list[float]:
    """Whole and part similarity of `query` to every choice (strings or syllable tuples), 0..100."""
    whole = _all(query, choices, fuzz.ratio)
    part = _all(query, choices, fuzz.partial_ratio, cutoff=PART_CUTOFF)
    n = len(query)
    # a part-match is never worth a whole one: a name met exactly outranks a longer query around it
    return [max(w, PART * p * _cover(min(n, m))) for w, p, m in zip(whole, part, lengths)]


def _scores(q: Query, ix: SearchIndex) -> list[float]:
    """The query's score against every entry of the index, each way of matching, the best kept."""
    cols = ix.columns
    best = [0.0] * len(ix.entries)

    def keep(values) -> None:
        for i, v in enumerate(values):
            if v > best[i]:
                best[i] = v

    if q.chars:
        keep(_similar(q.chars, cols["chars"], cols["chars_len"]))
        keep(_similar(q.chars, cols["content"], cols["content_len"]))
        sounds = "".join(ix.sound_codes.get(syl, "\ufffd") for syl in q.syllables)
        keep(0.96 * v for v in _similar(sounds, cols["sounds"], cols["syllables_len"]))
    elif q.latin:
        typed = q.latin
        if len(typed) >= 2:
            keep(96.0 if typed == ini else 86.0 if len(typed) >= 3 and ini.startswith(typed) else 0.0
                 for ini in cols["initials"])
        if len(typed) >= 4:
            keep(0.96 * v for v in _all(typed, cols["pinyin"], fuzz.ratio))
            keep(0.96 * _cover(len(typed) // 3) * v for v in _all(typed, cols["pinyin"], fuzz.partial_ratio))
    if q.latin_words:
        phrase = " ".join(q.latin_words)
        cover = _cover(len(phrase) // 2)
        keep(cover * v for v in _all(phrase, cols["words"], fuzz.token_set_ratio))
        keep(0.97 * cover * v for v in _all(phrase, cols["words"], fuzz.partial_ratio))
    return [b * e.weight for b, e in zip(best, ix.entries)]


def search(index: SearchIndex, query: str, limit: int = 10) -> SearchResult:
    """The bundles and services `query` finds, best first, ties by code: services from `THRESHOLD`
    on, bundles from it or, sharing a telling word with the query, from `EVIDENCE_THRESHOLD`."""
    q = analyse(query)
    if not (q.chars or q.latin):
        return SearchResult((), ())
    best: dict[str, tuple[float, str]] = {}
    for e, s in zip(index.entries, _scores(q, index)):
        if s > best.get(e.target, (-1.0, ""))[0]:
            best[e.target] = (s, e.shown)
    bundles: dict[str, tuple[float, str]] = {}
    services: list[Hit] = []
    for target, (score, shown) in best.items():
        kind, code = target.split(":", 1)
        if kind == "bundle":
            _keep(bundles, code, score, shown)
        else:
            if score >= THRESHOLD:
                services.append(Hit("service", code, round(score, 1), shown))
            for b in index.service_bundles.get(code, ()):  # a service's name is its bundle's too
                _keep(bundles, b, score, shown)
    # coverage: a bundle whose vocabulary holds more of the query's telling words gains up to
    # COVERAGE_BONUS — "个体户想转成公司" is 个转企 (个体户, 转成, 公司), not just 个体户开业
    query_words = _words(q.chars)
    total = sum(index.weight.get(w, index.unknown_weight) for w in query_words)
    telling: set[str] = set()  # bundles sharing a telling word with the query (evidence, see EVIDENCE_THRESHOLD)
    if total:
        for code, (s, shown) in list(bundles.items()):
            shared = query_words & index.words.get(code, frozenset())
            covered = sum(index.weight[w] for w in shared)
            if covered:
                bundles[code] = (min(100.0, s + COVERAGE_BONUS * covered / total), shown)
            if any(index.weight[w] >= index.telling_weight for w in shared):
                telling.add(code)
    ranked = [Hit("bundle", code, round(s, 1), shown) for code, (s, shown) in bundles.items()
              if s >= THRESHOLD or (s >= EVIDENCE_THRESHOLD and code in telling)]
    return SearchResult(tuple(_ordered(ranked)[:limit]), tuple(_ordered(services)[:limit]))


def _keep(best: dict[str, tuple[float, str]], code: str, score: float, shown: str) -> None:
    if score > best.get(code, (-1.0, ""))[0]:
        best[code] = (score, shown)


def _ordered(hits: Iterable[Hit]) -> list[Hit]:
    return sorted(hits, key=lambda h: (-h.score, h.code))
