"""structlog JSON logging with correlation ids, and masking of personal data wherever it appears.

Masking is the last processor before rendering, for structlog events and for every record of the
standard library's loggers alike (uvicorn, kafka-python, psycopg, `logging.exception`): those go
through the same processors by `structlog.stdlib.ProcessorFormatter`, so their messages and their
tracebacks come out as masked JSON lines too. An exception nobody caught (`sys.excepthook`, a
thread's `threading.excepthook`) and `warnings` are logged the same way instead of being printed.

What is found by shape, in every string of every value, list, nested dict and exception text:
- resident IDs: 18 characters (the last may be X) keep the region's first 3 digits and the last
  character; the old 15-digit ones keep the first 3 digits (they must not touch a letter either);
- mobile numbers, also written `138-1234-5678`, `138 1234 5678`, `+86 138…`, keep 3 + 4 digits
  (written with separators they must stand apart from letters, digits and dashes);
- bank card numbers, 16–19 digits, contiguous or grouped by spaces or dashes, keep the last 4 —
  only when they pass the Luhn check, as every issued card number does (ISO/IEC 7812). Without
  the check every long number (a nanosecond timestamp, Long.MAX_VALUE in a broker message) would
  be starred; with it one in ten of those is, which costs readability only. Account numbers that
  are not card numbers (passbooks, company accounts) are masked by their key instead;
- runs of two or more Chinese characters, masked like a name: a person's name cannot be found by
  shape, and in this system's logs (events are ASCII identifiers) Chinese text is what a person
  typed — a name, an address, a comment — or a library quoting it (a psycopg error quoting a row).
The system's own case ids and event ids (UUIDs) are left as they are, though their hex may hold a
phone-shaped run of digits: a log must stay searchable by them.

What is found by key: any value under a key that names a person or their contact (`name`,
`*_name`, `names`, `legal_representative`, `mother`, `address`, `bank_account_no`, …) is masked
whole, and so is everything inside it (`names=["张三", "Li Si"]`, `guardian={"en": "Wang"}`), so
names in Latin letters are masked there too. Not found: a Latin-script name in free text or in
an exception message — log people under a person key.
"""
from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Any

import structlog

RESIDENT_ID = re.compile(r"(?<!\d)(\d{6})(\d{8})(\d{3})([0-9Xx])(?!\d)")
# 6 region + YYMMDD + 3, no check digit: issued before 1999 and rare now, so it must also stand
# apart from letters — 15 digits in a row are common in hex ids, rarely 18
OLD_RESIDENT_ID = re.compile(r"(?<![0-9A-Za-z])(\d{3})\d{12}(?![0-9A-Za-z])")
# Written with separators, a number must stand apart from letters, digits and dashes and keep one
# separator throughout, so the groups of a UUID (`b867f133-7976-5609-…`) are never taken for one.
# Written without, only digits must not touch it (`ID110105…`, `电话13800138000` are found).
_APART = r"(?<![0-9A-Za-z-])"
MOBILE = re.compile(r"(?<!\d)(?:(?:\+|00)?86[- ]?)?(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
MOBILE_SPACED = re.compile(rf"(?:(?:\+|(?<!\d)00)86[- ]?|{_APART})(1[3-9]\d)([- ])(\d{{4}})\2(\d{{4}})(?!\d)")
# a lookahead, so that finditer tries every start: (contiguous) | (4 groups of 4)(a short last group)
CARD_AT = re.compile(rf"(?=(?<!\d)(\d{{16,19}})(?!\d)|{_APART}(\d{{4}}([- ])\d{{4}}(?:\3\d{{4}}){{2}})(?!\d)"
                     rf"(?:(\3\d{{1,3}})(?!\d))?)")
# the system's own ids are left alone: a case id or an event id with a phone-shaped run of digits
# in its hex would otherwise be starred, and a log could no longer be followed by it
OWN_IDS = re.compile(r"case-[0-9a-f]{12}(?:[0-9a-f]{8})?(?![0-9a-z])"
                     r"|(?<![0-9a-f])[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?![0-9a-f])")
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
HAN_RUN = re.compile(f"[{HAN}]{{2,}}")
NAME_KEYS = re.compile(r"(^|_)(name|names|legal_representative|contact|applicant|mother|father|spouse|guardian"
                       r"|deceased|holder|address|email|bank_account|account_no|card_no|bank_card)($|_)")
SAFE_NAME_KEYS = {"event", "logger", "logger_name", "level", "timestamp", "service", "topic", "bundle_code",
                  "service_id", "event_type", "department", "filename", "func_name"}


def luhn_ok(digits: str) -> bool:
    """The check digit of ISO/IEC 7812 card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _cards(text: str) -> list[tuple[int, int]]:
    """Spans of the card numbers in `text`. Every start is tried (a number that fails the check
    must not hide a card that begins inside it), and a grouped number with and without its short
    last group."""
    spans: list[tuple[int, int]] = []
    for m in CARD_AT.finditer(text):
        start = m.start()
        if spans and start < spans[-1][1]:
            continue
        if m.group(1):
            candidates = [m.group(1)]
        else:
            head = m.group(2)
            candidates = [head + (m.group(4) or ""), head] if m.group(4) else [head]
        for c in candidates:
            digits = re.sub(r"[- ]", "", c)
            if 16 <= len(digits) <= 19 and luhn_ok(digits):
                spans.append((start, start + len(c)))
                break
    return spans


def _mask_cards(text: str) -> str:
    for start, end in reversed(_cards(text)):
        digits = re.sub(r"[- ]", "", text[start:end])
        text = text[:start] + "*" * (len(digits) - 4) + digits[-4:] + text[end:]
    return text


def mask_text(text: str) -> str:
    """Keep only the region prefix of a resident ID, the ends of a mobile number, the last 4 digits
    of a card number and the first character of a run of Chinese text; case and event ids stay."""
    if OWN_IDS.search(text) is None:
        return _mask_shapes(text)
    out, last = [], 0
    for m in OWN_IDS.finditer(text):
        out += [_mask_shapes(text[last:m.start()]), m.group()]
        last = m.end()
    return "".join(out) + _mask_shapes(text[last:])


def _mask_shapes(text: str) -> str:
    text = RESIDENT_ID.sub(lambda m: m.group(1)[:3] + "*" * 14 + m.group(4)[-1:], text)
    text = OLD_RESIDENT_ID.sub(lambda m: m.group(1) + "*" * 12, text)
    text = MOBILE.sub(lambda m: m.group(1) + "****" + m.group(3), text)
    text = MOBILE_SPACED.sub(lambda m: m.group(1) + "****" + m.group(4), text)
    text = _mask_cards(text)
    return HAN_RUN.sub(lambda m: mask_name(m.group()), text)


def mask_name(value: Any) -> str:
    s = str(value)
    return (s[:1] + "*" * max(1, len(s) - 1)) if s else s


def personal_data_in(text: str) -> list[tuple[str, int]]:
    """What masking would still find in `text`, as (kind, offset) — never the value itself: an
    empty list for a line that came out of `mask_pii`. The tests scan rendered lines with it."""
    text = OWN_IDS.sub(lambda m: "_" * len(m.group()), text)
    found = [("resident_id", m.start()) for m in RESIDENT_ID.finditer(text)]
    found += [("old_resident_id", m.start()) for m in OLD_RESIDENT_ID.finditer(text)]
    found += [("card", start) for start, _ in _cards(text)]
    found += [("mobile", m.start()) for rx in (MOBILE, MOBILE_SPACED) for m in rx.finditer(text)]
    return found + [("chinese_text", m.start()) for m in HAN_RUN.finditer(text)]


def _person_key(key: str) -> bool:
    return bool(key) and key not in SAFE_NAME_KEYS and bool(NAME_KEYS.search(key.lower()))


def _mask_person(value: Any) -> Any:
    """Everything under a person key: every leaf is the person's, whatever its own key says."""
    if isinstance(value, dict):
        return {k: _mask_person(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_mask_person(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    return mask_name(mask_text(value) if isinstance(value, str) else value)


def _mask(value: Any, key: str = "") -> Any:
    if _person_key(key):
        return _mask_person(value)
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: _mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_mask(v) for v in value]
    if isinstance(value, BaseException):
        return mask_text(repr(value))
    if isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) >= 11:
        masked = mask_text(str(value))  # an 11-digit int could be a phone number, 15+ an ID or a card
        return value if masked == str(value) else masked
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return mask_text(str(value))


def mask_pii(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: _mask(v, k) for k, v in event_dict.items()}


def _service(name: str):
    """`service` on every line: contextvars bound in the main thread do not reach worker threads
    (a runtime's workers, kafka-python's network thread), so it is also a default here."""
    def add(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict.setdefault("service", name)
        return event_dict
    return add


def _stdlib_handler(stream, service: str) -> logging.Handler:
    """Records of the standard library's loggers, rendered by the same masking and JSON renderer;
    `format_exc_info` turns a record's traceback into the `exception` field before masking."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            _service(service),
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            mask_pii,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
    ))
    handler._onething = True  # type: ignore[attr-defined]  # ours: the next configure() replaces it
    return handler


def _log_uncaught(exc_type, exc_value, exc_tb) -> None:
    """sys.excepthook: the traceback Python would print raw to stderr, as a masked JSON line."""
    logging.getLogger("uncaught").critical("process.uncaught_exception", exc_info=(exc_type, exc_value, exc_tb))


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is not SystemExit:
        logging.getLogger("uncaught").critical("thread.uncaught_exception",
                                               exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


_saved_hooks: list[tuple[Any, Any]] = []


def configure(service: str = "onething", level: str = "INFO", stream=None) -> None:
    """JSON lines to stderr: one object per event, correlation ids merged from contextvars."""
    processors = [
        structlog.contextvars.merge_contextvars,
        _service(service),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        mask_pii,
        structlog.processors.JSONRenderer(ensure_ascii=False),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # the Kafka and HTTP libraries log through stdlib logging: keep them quiet, masked and JSON too
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_onething", False)]:
        root.removeHandler(old)
    root.addHandler(_stdlib_handler(stream or sys.stderr, service))
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    if sys.excepthook is not _log_uncaught:
        _saved_hooks.append((sys.excepthook, threading.excepthook))
    sys.excepthook, threading.excepthook = _log_uncaught, _thread_hook


def unconfigure() -> None:
    """Undo `configure` (tests): structlog's defaults, our stdlib handler gone, the hooks restored."""
    structlog.reset_defaults()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_onething", False)]:
        root.removeHandler(old)
    logging.captureWarnings(False)
    if _saved_hooks:
        sys.excepthook, threading.excepthook = _saved_hooks.pop()


bind = structlog.contextvars.bind_contextvars
unbind = structlog.contextvars.unbind_contextvars
bound = structlog.contextvars.bound_contextvars
