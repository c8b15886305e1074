"""The read audit's hash chain as properties (projectors/audit_chain.py): whatever the reads, a
chain as linked verifies; any change of a hashed value, any row taken out of the middle, any two
rows swapped is found — at the very row where it happened."""
from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from projectors.audit_chain import GENESIS, HASHED, Head, breaks, canonical, extend, link, row_hash

_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
_times = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2100, 1, 1),
                      timezones=st.just(timezone.utc)).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))


def _read(subject):
    return st.fixed_dictionaries({
        "subject": st.just(subject), "event_id": st.uuids().map(str), "occurred_at": _times, "staff_id": _text,
        "role": st.sampled_from(["department", "clerk", "supervisor", "register"]),
        "channel": st.sampled_from(["department", "window", "online"]),
        "department": st.none() | st.sampled_from(["police", "health", "tax"]),
        "kind": st.sampled_from(["case_view", "worklist", "escalation", "e_license"]),
        "case_id": st.none() | _text, "service_id": st.none() | _text, "fields": st.lists(_text, max_size=3),
        "document_id": st.none() | _text, "purpose": st.sampled_from(["task", "worklist", "escalation", "filing"]),
        "purpose_id": st.none() | _text, "route": _text, "correlation_id": _text})


def _chained(reads):
    rows, _ = extend({}, reads)
    return sorted(rows, key=lambda r: (r["subject"], r["position"]))  # as `ORDER BY subject, position` reads them


chains = st.lists(st.sampled_from(["p_a", "p_b", "p_c"]), min_size=1, max_size=12).flatmap(
    lambda subjects: st.tuples(*(_read(s) for s in subjects)).map(list))


@settings(max_examples=40, deadline=None)
@given(chains)
def test_a_chain_as_linked_verifies(reads):
    rows = _chained(reads)
    assert list(breaks(rows)) == []
    for subject in {r["subject"] for r in rows}:
        mine = [r for r in rows if r["subject"] == subject]
        assert [r["position"] for r in mine] == list(range(1, len(mine) + 1))
        assert mine[0]["prev_hash"] == GENESIS
        assert all(b["prev_hash"] == a["row_hash"] for a, b in zip(mine, mine[1:]))


@settings(max_examples=40, deadline=None)
@given(chains, st.data())
def test_a_changed_value_is_found_at_its_row(reads, data):
    rows = _chained(reads)
    i = data.draw(st.integers(0, len(rows) - 1))
    column = data.draw(st.sampled_from([c for c in HASHED if c not in ("subject", "position")]))
    before = rows[i][column]
    after = data.draw(_read(rows[i]["subject"]))[column]
    if column == "fields":
        after = [*before, "forged"]
    elif after == before:
        after = (before or "") + "x" if column != "occurred_at" else before.replace(year=before.year + 1)
    rows[i] = rows[i] | {column: after}
    assert [(b.subject, b.position, b.reason) for b in breaks(rows)] == [
        (rows[i]["subject"], rows[i]["position"], "row_hash")]


@settings(max_examples=30, deadline=None)
@given(chains, st.data())
def test_a_row_taken_out_of_the_middle_is_found_at_the_next(reads, data):
    rows = _chained(reads)
    middles = [i for i in range(len(rows) - 1) if rows[i]["subject"] == rows[i + 1]["subject"]]
    if not middles:
        return
    i = data.draw(st.sampled_from(middles))
    after = rows[i + 1]
    del rows[i]
    assert [(b.subject, b.position, b.reason) for b in breaks(rows)] == [(after["subject"], after["position"], "position")]


@settings(max_examples=30, deadline=None)
@given(chains, st.data())
def test_rows_swapped_or_rehashed_without_their_successor_are_found(reads, data):
    rows = _chained(reads)
    pairs = [i for i in range(len(rows) - 1) if rows[i]["subject"] == rows[i + 1]["subject"]]
    if not pairs:
        return
    i = data.draw(st.sampled_from(pairs))
    swapped = rows[:i] + [rows[i + 1], rows[i]] + rows[i + 2:]
    assert next(breaks(swapped)).position == rows[i + 1]["position"]
    # a forger who changes a row and recomputes its own hash still breaks the link of the next one
    forged = dict(rows[i]) | {"purpose": "forged"}
    forged["row_hash"] = row_hash(forged["prev_hash"], forged)
    reforged = rows[:i] + [forged] + rows[i + 1:]
    (found,) = list(breaks(reforged))
    assert (found.position, found.reason) == (rows[i + 1]["position"], "prev_hash")


def test_the_hash_does_not_depend_on_how_the_time_or_the_fields_are_written():
    row = {"subject": "p_a", "position": 1, "event_id": "e", "occurred_at": datetime(2026, 12, 1, 8, tzinfo=timezone.utc),
           "fields": ("b", "a"), "kind": "case_view"}
    from datetime import timedelta

    beijing = timezone(timedelta(hours=8))
    same = row | {"occurred_at": datetime(2026, 12, 1, 16, tzinfo=beijing), "fields": ["b", "a"], "position": "1"}
    assert canonical(row) == canonical(same)
    assert link(Head(), row)["row_hash"] == link(Head(), same)["row_hash"]
    assert "2026-12-01T08:00:00.000+00:00" in canonical(row).decode()
