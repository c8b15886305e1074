"""No resident ID (18 or 15 digits), no mobile number however written, no card number and no name
survives into a log line: structlog events, the standard library's records and their tracebacks,
uncaught exceptions, and every line the suite's own processes wrote."""
from __future__ import annotations

import io
import json
import os
import re
from datetime import date

import pytest
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


# --- every position, every shape (issue 10, item 8) ---------------------------------------------

def _luhn_complete(body: str) -> str:
    for check in "0123456789":
        if log.luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable")


old_ids = st.builds(lambda region, d, seq: f"{region}{d:%y%m%d}{seq}",
                    st.from_regex(r"[1-9]\d{5}", fullmatch=True),
                    st.dates(min_value=date(1900, 1, 1), max_value=date(1999, 12, 31)),
                    st.from_regex(r"\d{3}", fullmatch=True))
mobiles_written = st.builds(lambda m, style: {
    "plain": m, "dashes": f"{m[:3]}-{m[3:7]}-{m[7:]}", "spaces": f"{m[:3]} {m[3:7]} {m[7:]}",
    "+86": f"+86 {m}", "+86 spaced": f"+86 {m[:3]} {m[3:7]} {m[7:]}", "+86-": f"+86-{m[:3]}-{m[3:7]}-{m[7:]}",
}[style], mobiles, st.sampled_from(["plain", "dashes", "spaces", "+86", "+86 spaced", "+86-"]))
def _card(prefix: str, rest: str, sep: str) -> str:
    n = _luhn_complete(prefix + rest)
    return sep.join(n[i:i + 4] for i in range(0, len(n), 4)) if sep else n


cards = st.tuples(st.sampled_from(["62", "4", "51", "35"]), st.integers(16, 19),
                  st.sampled_from(["", " ", "-"])).flatmap(  # prefix, length, separator
    lambda t: st.from_regex(rf"[0-9]{{{t[1] - len(t[0]) - 1}}}", fullmatch=True).map(
        lambda rest: _card(t[0], rest, t[2])))
han_names = st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5), min_size=2, max_size=4)
latin_names = st.from_regex(r"[A-Z][a-z]{4,8} [A-Z][a-z]{4,8}", fullmatch=True)
# free text around the data: no digits (they would lengthen a number), no Chinese (it would join a name)
glue_free = st.text(st.characters(blacklist_categories=("Nd", "Cs", "Cc", "Lo")), max_size=8)
plain_keys = st.sampled_from(["note", "detail", "row", "values", "payload", "error_text", "items"])
person_keys = st.sampled_from(["child_name", "names", "holder_name", "legal_representative", "mother",
                               "guardian", "bank_account_no", "residence_address"])


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


@settings(max_examples=150, deadline=None)
@given(rid=resident_ids, old=old_ids, phone=mobiles_written, card=cards, han=han_names, latin=latin_names,
       pre=glue_free, post=glue_free, key=plain_keys, pkey=person_keys, position=st.integers(0, 5))
def test_personal_data_is_masked_in_every_position(rid, old, phone, card, han, latin, pre, post, key, pkey,
                                                    position):
    import logging

    shaped = [rid, old, phone, card, han]  # found by their shape wherever they are
    # numbers written with separators, and old 15-digit IDs, are found when they stand apart from letters
    spaced = (lambda v: f" {v} " if any(c in v for c in " -") else v)
    text = f"{pre}{rid}{post} {pre} {old} {post} {pre}{spaced(phone)}{post} {pre}{spaced(card)}{post} {pre}{han}{post}"
    buf = io.StringIO()
    log.configure("test", "DEBUG", stream=buf)
    try:
        lg = structlog.get_logger("test")
        placed = [
            lambda: lg.info(text),
            lambda: lg.info("event", **{key: text}),
            lambda: lg.info("event", **{key: shaped, "n": int(_digits(card))}),
            lambda: lg.info("event", **{key: {"inner": [{"deeper": text}], "t": tuple(shaped)}}),
            lambda: lg.info("event", **{pkey: [latin, han, {"x": latin}], "other": {pkey: latin}}),
            lambda: lg.info("event", **{pkey: latin}),
        ]
        placed[position]()
        try:
            raise RuntimeError(f"DETAIL: Failing row contains ({text})")
        except RuntimeError:
            lg.exception("structlog.crashed")
            logging.getLogger("psycopg.test").exception("query failed: %s", text)
            logging.getLogger("uvicorn.error").error("Exception in ASGI application\n", exc_info=True)
        logging.getLogger("kafka.conn").warning("broker said %s about %r", text, shaped)
    finally:
        log.unconfigure()
    out = buf.getvalue()
    lines = out.splitlines()
    assert len(lines) == 5 and all(json.loads(line) for line in lines)  # the stdlib records are JSON too
    assert all("Traceback" in json.loads(line).get("exception", "Traceback") for line in lines)
    for secret in [*shaped, _digits(phone), _digits(card), latin]:
        assert secret not in out, (secret, out)
    for line in lines:
        assert log.personal_data_in(line) == [], line


def test_long_numbers_that_are_not_cards_and_uuids_stay_readable():
    kept = ["1796123456789012346", "9223372036854775807", "d1329371-6000-57d0-8e5b-8b5c1ed1b2c3",
            "43779596-4421-5824-8cc7-47c749a1b2c3", "offset 1234567890", "b867f133-7976-5609-9f1f-a1b7b2da2491",
            "case-566255620814481ba44a:disease_control.vaccination_record:1", "case-a13800138000",
            "12345678-1380-0138-0001-380013800138"]
    for text in kept:
        if text.isdigit():
            assert not log.luhn_ok(text)
        assert log.mask_text(text) == text
    assert log.mask_text("4111 1111 1111 1111") == "************1111"
    assert log.mask_text("tel 138-1234-5678") == "tel 138****5678"


def test_an_uncaught_exception_is_a_masked_json_line():
    """What `onething run` children used to print raw to their log file when they crashed."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("from infra import log; log.configure('crash-test')\n"
            "raise RuntimeError('row (王小明, 11010519491231002X, 13800138000)')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 1
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert line["event"] == "process.uncaught_exception" and "RuntimeError" in line["exception"]
    for secret in ("王小明", "11010519491231002X", "13800138000"):
        assert secret not in done.stderr


def test_a_thread_that_dies_is_logged_masked():
    import threading

    buf = io.StringIO()
    log.configure("test", "DEBUG", stream=buf)
    try:
        t = threading.Thread(target=lambda: (_ for _ in ()).throw(ValueError("王小明 13800138000")))
        t.start()
        t.join()
    finally:
        log.unconfigure()
    line = json.loads(buf.getvalue().splitlines()[-1])
    assert line["event"] == "thread.uncaught_exception" and line["service"] == "test"  # not bound in that thread
    assert "王小明" not in buf.getvalue() and "13800138000" not in buf.getvalue()


# --- every log line the suite's own processes wrote ---------------------------------------------
# The e2e tests run `onething run`-style processes with their output in log files: those of
# infra/supervisor.py `system()` and the `start_process` / `_start_*` helpers under the session's
# base temporary directory, and those of `run_demo` (tests/test_newborn_e2e.py) under
# `$ONETHING_HOME/logs`, appended to across sessions. This test runs after every other test of the
# session (marker `after_all_logs`, ordered by tests/conftest.py) and reads what they left — of
# the home's logs only what this session appended (their sizes are taken here, at collection).
THIRD_PARTY = re.compile(r"server|stdout|controller|state-change|log-cleaner|prometheus|\d{20}")


def _home_logs():
    from infra.settings import Settings

    return Settings.from_env().home / "logs"


def _sizes(directory) -> dict:
    return {p: p.stat().st_size for p in directory.glob("*.log")} if directory.is_dir() else {}


HOME_LOGS_AT_START = _sizes(_home_logs())


def _process_logs(base):
    """(path, offset): the log files under `base` that our processes wrote."""
    from pathlib import Path

    for path in sorted(Path(base).rglob("*.log")):
        if (not path.is_file() or THIRD_PARTY.fullmatch(path.stem)
                or any(p in ("kafka", "prometheus") or re.fullmatch(r"node-\d+", p) for p in path.parts)):
            continue  # the broker's and Prometheus' own logs, and Kafka's segment files (the events)
        yield path, 0


def _session_logs(base) -> list:
    home = [(p, HOME_LOGS_AT_START.get(p, 0)) for p, size in _sizes(_home_logs()).items()
            if size > HOME_LOGS_AT_START.get(p, 0)]
    return list(_process_logs(base)) + home


def _fixture_values() -> set[str]:
    from infra.samples import newborn_form

    form = newborn_form()
    return {str(form[k]) for k in ("child_name", "mother_name", "contact_mobile", "mother_resident_id",
                                   "bank_account_no", "residence_address", "household_address")}


def _leaks(files: list) -> tuple[list[str], int]:
    """`file:line: kinds` for each line that still holds personal data — never the line itself."""
    literal = _fixture_values()
    leaks, lines = [], 0
    for path, offset in files:
        with open(path, "rb") as f:
            f.seek(offset)
            for n, raw in enumerate(f, start=1):
                line = raw.decode("utf-8", errors="replace")
                lines += 1
                kinds = sorted({k for k, _ in log.personal_data_in(line)}
                               | {"fixture value" for v in literal if v in line})
                if kinds:
                    leaks.append(f"{path}{'+' + str(offset) if offset else ''}:{n}: {', '.join(kinds)}")
    return leaks, lines


@pytest.mark.after_all_logs
@pytest.mark.parametrize("lane", [pytest.param("whole-system", marks=pytest.mark.slow), "others"])
def test_every_log_line_the_suite_wrote_carries_no_personal_data(lane, tmp_path_factory):
    """Once in each lane of the test command (infra/onething.sh): the whole-system scenarios' logs,
    and the other files' — under pytest-xdist every worker's temporary directory."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent   # …/pytest-N/popen-gwK: the workers share pytest-N
    files = _session_logs(base)
    if not files:
        pytest.skip("no process wrote a log in this session (run with the e2e tests)")
    leaks, lines = _leaks(files)
    assert not leaks, f"{len(leaks)} of {lines} lines in {len(files)} files:\n" + "\n".join(leaks[:50])


def test_the_log_scan_finds_what_masking_would_have_hidden():
    """The scan itself, on files of its own (outside the session's temporary directory, which the
    scan above reads): an unmasked line and a raw traceback are found, an id and Kafka's data not."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "logs").mkdir()
        (Path(d) / "logs" / "core.log").write_text(
            '{"event": "x", "child_name": "李小满"}\nValueError: 138-1234-5678\n'
            '{"event": "ok", "case_id": "case-566255620814481ba44a"}\n', encoding="utf-8")
        (Path(d) / "logs" / "00000000000000000000.log").write_text("13800138000")  # Kafka's: not ours
        leaks, lines = _leaks(list(_process_logs(d)))
    assert lines == 3 and [entry.rsplit(":", 2)[1:] for entry in leaks] == [["1", " chinese_text, fixture value"],
                                                                           ["2", " mobile"]]
