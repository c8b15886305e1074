"""structlog JSON logging with correlation ids, and masking of personal data wherever it appears.

Masking is the last processor before rendering, so it also covers exception text and values
bound by any library. Resident IDs (18 chars) and mobile numbers (11 digits) are found by
shape anywhere in any string; names cannot be found by shape, so any value under a key that
names a person (`name`, `*_name`, `legal_representative`, …) is masked whole.
"""
from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

RESIDENT_ID = re.compile(r"(?<!\d)(\d{6})(\d{8})(\d{3})([0-9Xx])(?!\d)")
MOBILE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
NAME_KEYS = re.compile(r"(^|_)(name|names|legal_representative|contact|applicant|mother|father|spouse|guardian|deceased)($|_)")
SAFE_NAME_KEYS = {"event", "logger", "logger_name", "level", "timestamp", "service", "topic", "bundle_code",
                  "service_id", "event_type", "department", "filename", "func_name"}


def mask_text(text: str) -> str:
    """Keep only the region prefix of a resident ID and the ends of a mobile number."""
    text = RESIDENT_ID.sub(lambda m: m.group(1)[:3] + "*" * 14 + m.group(4)[-1:], text)
    return MOBILE.sub(lambda m: m.group(1) + "****" + m.group(3), text)


def mask_name(value: Any) -> str:
    s = str(value)
    return (s[:1] + "*" * max(1, len(s) - 1)) if s else s


def _mask(value: Any, key: str = "") -> Any:
    if key and key not in SAFE_NAME_KEYS and NAME_KEYS.search(key.lower()):
        if isinstance(value, (str, int)):
            return mask_name(value)
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: _mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_mask(v) for v in value]
    if isinstance(value, BaseException):
        return mask_text(repr(value))
    if isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) >= 11:
        return mask_text(str(value))  # an 11-digit int could be a phone number
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return mask_text(str(value))


def mask_pii(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: _mask(v, k) for k, v in event_dict.items()}


def configure(service: str = "onething", level: str = "INFO", stream=None) -> None:
    """JSON lines to stderr: one object per event, correlation ids merged from contextvars."""
    processors = [
        structlog.contextvars.merge_contextvars,
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
    # the Kafka and HTTP libraries log through stdlib logging: keep them quiet and masked too
    logging.basicConfig(level=logging.WARNING, stream=stream or sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_StdlibMask())


class _StdlibMask(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_text(record.getMessage())
        record.args = ()
        return True


bind = structlog.contextvars.bind_contextvars
unbind = structlog.contextvars.unbind_contextvars
bound = structlog.contextvars.bound_contextvars
