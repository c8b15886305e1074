"""What is wrong with text that arrives at an edge (an API body, a register change), pure.

Text from outside becomes an event, and an event lives forever: a NUL that PostgreSQL cannot
store stops a consumer on every restart, an ESC in a name repaints a supervisor's terminal, a
right-to-left override makes `2202` read as `2022` on a screen. So every edge asks this module
before anything is recorded, and this module is the only place the rule is written down.

Refused everywhere, with the error code of each class:
- C0 controls U+0000–U+001F, DEL U+007F, C1 controls U+0080–U+009F (`text.control_character`):
  invisible; NUL cannot be stored; ESC and C1 CSI drive terminals.
- lone surrogates U+D800–U+DFFF (`text.lone_surrogate`): not text — JSON can spell one
  (`"\\ud800"`), UTF-8 cannot encode it, so it can be neither stored nor sent on.
- noncharacters U+FDD0–U+FDEF and U+xxFFFE/U+xxFFFF of every plane (`text.noncharacter`):
  reserved for a program's internal use; U+FFFE is a byte-order mark read backwards.
- bidi embeddings, overrides and isolates U+202A–U+202E, U+2066–U+2069 (`text.bidi_control`):
  they reorder what a reader sees (Trojan Source) and Chinese text never needs them.
- line and paragraph separators U+2028, U+2029 (`text.line_separator`): a line break that a
  single-line check does not see, and one that ends a JavaScript string literal.

except, in a multi-line field (`MULTILINE_FIELDS`: the free-text comments of ratings and
escalations, replies, resolutions and reasons), TAB, LF, and CR when it is part of CRLF.
Everything else passes: Chinese, emoji (with their zero-width joiners and variation selectors),
private-use characters, characters newer than this Python's Unicode tables.

A problem names the field and the character (class, code point, position) and never repeats
the value: the value may be a name or a resident ID, and it is exactly what a log must not hold.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["MULTILINE_FIELDS", "TextProblem", "text_problems", "text_errors", "field_path", "CODES",
           "CONTROL", "SURROGATE", "NONCHARACTER", "BIDI", "LINE_SEPARATOR"]

# Field shapes (indices written `[]`) whose value is prose a person may break into lines.
# From producers/oversight_api.py (EscalationIn.comment, RatingIn.comment and
# RatingIn.services[].comment, ReplyIn.reply, ExtendIn.reason, ResolveIn.resolution) and
# producers/intake_api.py (WithdrawIn.reason). Form fields, names, ids and addresses are single-line.
MULTILINE_FIELDS: frozenset[str] = frozenset({"comment", "services[].comment", "reply", "resolution", "reason"})

CONTROL, SURROGATE, NONCHARACTER = "text.control_character", "text.lone_surrogate", "text.noncharacter"
BIDI, LINE_SEPARATOR = "text.bidi_control", "text.line_separator"
# error code -> (zh, en) description of the class; the position is added around it
CODES: dict[str, tuple[str, str]] = {
    "text.control_character": ("不可见的控制字符", "an invisible control character"),
    "text.lone_surrogate": ("无效的字符编码（孤立代理项）", "a lone surrogate (not a valid character)"),
    "text.noncharacter": ("Unicode非字符", "a Unicode noncharacter"),
    "text.bidi_control": ("改变文字方向的不可见字符", "an invisible bidirectional override"),
    "text.line_separator": ("Unicode行分隔符", "a Unicode line or paragraph separator"),
}
_C0_NAMES = ("NUL SOH STX ETX EOT ENQ ACK BEL BS TAB LF VT FF CR SO SI DLE DC1 DC2 DC3 DC4 NAK SYN ETB "
             "CAN EM SUB ESC FS GS RS US").split()

# One regex finds the first offending character fast (a form may be 256 KiB); the class and
# name of what it found are then worked out for that one character only.
_REST = ("\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff\u202a-\u202e\u2066-\u2069\u2028\u2029"
         + "".join(f"{chr(p << 16 | 0xFFFE)}{chr(p << 16 | 0xFFFF)}" for p in range(1, 17)))
_SINGLE = re.compile(f"[\x00-\x1f{_REST}]")
_MULTI = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f{_REST}]|\r(?!\n)")  # TAB, LF and CRLF pass


def _kind(ch: str) -> str:
    o = ord(ch)
    if unicodedata.category(ch) == "Cc":
        return "text.control_character"
    if 0xD800 <= o <= 0xDFFF:
        return "text.lone_surrogate"
    if 0xFDD0 <= o <= 0xFDEF or (o & 0xFFFE) == 0xFFFE:
        return "text.noncharacter"
    if unicodedata.bidirectional(ch) in {"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"}:
        return "text.bidi_control"
    return "text.line_separator"


def _char_name(ch: str) -> str:
    o = ord(ch)
    if o < 0x20:
        return f"U+{o:04X} {_C0_NAMES[o]}"
    if o == 0x7F:
        return "U+007F DEL"
    try:
        return f"U+{o:04X} {unicodedata.name(ch)}"
    except ValueError:  # C1 controls, surrogates and noncharacters have no name
        return f"U+{o:04X}"


class TextProblem(tuple):
    """`(path, reason)`, so it unpacks and compares as the pair; `code`, `reason_zh` ride along for
    the API's error entry."""

    code: str
    reason_zh: str

    def __new__(cls, path: str, reason: str, code: str = "text.control_character", reason_zh: str = ""):
        self = super().__new__(cls, (path, reason))
        self.code, self.reason_zh = code, reason_zh or reason
        return self

    @property
    def path(self) -> str:
        return self[0]

    @property
    def reason(self) -> str:
        return self[1]


def field_path(path: tuple[str | int, ...], *, shape: bool = False) -> str:
    """`("materials", 2, "ref")` -> `materials[2].ref` (its shape: `materials[].ref`); the root is ``""``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += "[]" if shape else f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problem(path: tuple[str | int, ...], text: str, pattern: re.Pattern[str],
             key_no: int | None) -> TextProblem | None:
    found = pattern.search(text)
    if found is None:
        return None
    ch, pos = found.group()[0], found.start() + 1
    count = len(pattern.findall(text))
    code = _kind(ch)
    zh_class, en_class = CODES[code]
    name = _char_name(ch)
    where_en = f"key no. {key_no}" if key_no else "the text"
    where_zh = f"第{key_no}个键名" if key_no else "内容"
    more_en = f" ({count} such characters in all)" if count > 1 else ""
    more_zh = f"（共{count}处）" if count > 1 else ""
    return TextProblem(field_path(path),
                       f"{where_en} contains {en_class} ({name}) at character {pos}{more_en}",
                       code, f"{where_zh}第{pos}个字符是{zh_class}（{name}）{more_zh}")


def text_problems(value: Any, path: tuple[str | int, ...] = (),
                  multiline: Callable[[tuple[str | int, ...]], bool] | frozenset[str] = MULTILINE_FIELDS,
                  limit: int = 50) -> list[tuple[str, str]]:
    """Every string in `value` (dict keys too, lists, nested) checked; one problem per string at most,
    `limit` in all (a hostile body should not make a hostile error body).

    `multiline` is a predicate on a string's full path, or a set of field shapes such as
    `services[].comment` matched against it; pass ``frozenset()`` when every field is single-line.
    Keys are always single-line; an entry whose key is refused is not looked into (its path would
    have to quote the key). Walks with an explicit stack, so no nesting depth raises."""
    allows: Callable[[tuple[str | int, ...]], bool] = (
        (lambda p: field_path(p, shape=True) in multiline) if isinstance(multiline, (frozenset, set)) else multiline)
    problems: list[tuple[str, str]] = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [(tuple(path), value)]
    while stack and len(problems) < limit:
        at, item = stack.pop()
        if isinstance(item, str):
            found = _problem(at, item, _MULTI if allows(at) else _SINGLE, None)
            if found:
                problems.append(found)
        elif isinstance(item, Mapping):
            children = []
            for n, (k, v) in enumerate(item.items(), start=1):
                key = k if isinstance(k, str) else str(k)
                bad = _problem(at, key, _SINGLE, n)
                if bad:
                    problems.append(bad)
                else:
                    children.append((at + (key,), v))
            stack.extend(reversed(children))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed([(at + (i,), v) for i, v in enumerate(item)]))
    return problems[:limit]


def text_errors(problems: list[tuple[str, str]], root: str = "body") -> list[dict[str, str]]:
    """The API's error entries (the shape of `intake_api.err()`): path, code, message_zh, message_en.
    A problem of the whole body (path ``""``) is reported at `root`."""
    out = []
    for p in problems:
        path, reason = p
        code = getattr(p, "code", "text.control_character")
        zh = getattr(p, "reason_zh", reason)
        out.append({"path": path or root, "code": code, "message_zh": zh, "message_en": reason})
    return out
