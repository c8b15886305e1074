"""No 18-character resident ID, no 11-digit mobile number and no name survives into a log line."""
from __future__ import annotations

import io
import json
import re
from datetime import date

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from infra import log

ID_SHAPE = re.compile(r"\d{17}[\dXx]")
MOBILE_SHAPE = re.compile(r"1[3-9]\d{9}")

resident_ids = st.builds(
    lambda region, date, seq, check: f"{region}{date}{seq}{check}",
    st.from_regex(r"[1-9]\d{5}", fullmatch=True),
    st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31)).map(lambda d: d.strftime("%Y%m%d")),
    st.from_regex(r"\d{3}", fullmatch=True),
    st.sampled_from("0123456789X"),
)
mobiles = st.from_regex(r"1[3-9]\d{9}", fullmatch=True)
glue = st.text(alphabet=st.characters(blacklist_categories=("Nd", "Cs")), max_size=8)


def _capture(fn) -> str:
    buf = io.StringIO()
    log.configure("test", "DEBUG", stream=buf)
    try:
        fn(structlog.get_logger("test"))
    finally:
        structlog.reset_defaults()
    return buf.getvalue()


@settings(max_examples=200, deadline=None)
@given(rid=resident_ids, phone=mobiles, pre=glue, post=glue)
def test_ids_and_mobiles_are_masked_everywhere(rid, phone, pre, post):
    def emit(logger):
        logger.info(f"applicant {pre}{rid}{post} called from {phone}",
                    form={"mother_resident_id": rid, "contacts": [phone, f"+86 {phone}"]},
                    note=f"{pre}{phone}{post}", raw_int=int(phone))
        try:
            raise ValueError(f"bad id {rid}")
        except ValueError:
            logger.exception("validation crashed")

    out = _capture(emit)
    assert not ID_SHAPE.search(out), out
    assert not MOBILE_SHAPE.search(out), out
    assert rid[:3] in out  # the region prefix stays, so a log is still useful for routing


def test_names_under_person_keys_are_masked():
    out = _capture(lambda lg: lg.info("submitted", child_name="王小明", mother_name="李华",
                                       legal_representative="张三丰", bundle_code="newborn"))
    for name in ("王小明", "李华", "张三丰"):
        assert name not in out
    line = json.loads(out.splitlines()[0])
    assert line["child_name"] == "王**" and line["bundle_code"] == "newborn"


def test_lines_are_json_with_correlation_id():
    def emit(logger):
        with log.bound(correlation_id="c-123", case_id="case-9"):
            logger.info("dispatched", department="police")
    line = json.loads(_capture(emit).splitlines()[0])
    assert line["correlation_id"] == "c-123" and line["event"] == "dispatched" and line["service"] == "test"


def test_stdlib_loggers_are_masked_too():
    import logging

    buf = io.StringIO()
    log.configure("test", "DEBUG", stream=buf)
    try:
        logging.getLogger("kafka.test").warning("broker said %s", "11010519491231002X")
    finally:
        structlog.reset_defaults()
        for h in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(h)
    assert "11010519491231002X" not in buf.getvalue()
