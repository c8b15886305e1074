"""Decision authority: a department may decide only its own services, on its own topic.

The rule is pure (projectors/authority.py) and checked in the runtime for every processor that
reads a department's decision topic. Against the real broker: health forges a rejection of
disease control's vaccination record (on its own topic, and claiming to be disease control);
dispatch and the case view dead-letter both with `decision.not_authorised`, and the case goes on
to be decided by disease control itself.
"""
from __future__ import annotations

import uuid

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalog.loader import load_catalog
from events.envelope import Actor, new_event
from infra import migrations
from infra.topics import DEADLETTER, decisions_topic
from projectors import authority, case_view
from projectors.case_view import CaseViewProjection, read_case
from projectors.dispatch import Dispatch
from projectors.postgres_projection import ProjectionProcessor, drop_schema
from projectors.runtime import Worker

from .support.newborn import submission
from .support.offsets import end_offsets, seed_offsets
from .support.poison import Topics, dead_letters, drive, ends_of, forget, produce

CAT = load_catalog()
OWNER = authority.catalog_owner(CAT)
SERVICES = sorted(CAT.services)
DEPARTMENTS = sorted(CAT.departments)
ROLES = ("applicant", "clerk", "department", "register", "system", "supervisor")
VACCINATION = "disease_control.vaccination_record"


def decision(case_id: str, sid: str, department: str, *, role: str = "department", attempt: int = 1,
             outcome: str = "rejected", task_id: str | None = None, kind: str = "case_service"):
    return new_event("DecisionRecorded", case_id,
                     {"task_id": task_id if task_id is not None else f"{case_id}:{sid}:{attempt}", "department": department,
                      "service_id": sid, "kind": kind, "outcome": outcome, "reason": "forged" if outcome == "rejected"
                      else None, "missing_materials": [], "outputs": {}},
                     actor=Actor(f"staff_{department}", role, "department" if role == "department" else "system"),
                     region_code="440203")


# -- the rule -------------------------------------------------------------------------------------
@given(st.sampled_from(SERVICES), st.sampled_from(DEPARTMENTS), st.sampled_from(DEPARTMENTS))
def test_a_decision_is_folded_only_from_the_owner_on_its_own_topic(sid, topic_dept, claimed):
    event = decision("case-1", sid, claimed)
    reason = authority.refusal(decisions_topic(topic_dept), event, OWNER)
    allowed = topic_dept == claimed == CAT.service(sid).department
    assert (reason is None) == allowed, reason
    if reason:
        assert reason.startswith("decision.not_authorised: ")


@given(st.sampled_from(SERVICES), st.sampled_from([r for r in ROLES if r != "department"]))
def test_only_a_department_actor_decides(sid, role):
    dept = CAT.service(sid).department
    assert authority.refusal(decisions_topic(dept), decision("case-1", sid, dept, role=role), OWNER)


@given(st.sampled_from(SERVICES), st.one_of(st.text(max_size=40), st.builds(
    lambda sid, tail: f"case-1:{sid}:{tail}", st.sampled_from(SERVICES), st.text("0123456789²:x", max_size=4))))
def test_a_task_id_of_another_case_or_service_is_refused(sid, task_id):
    dept = CAT.service(sid).department
    event = decision("case-1", sid, dept, task_id=task_id)
    rest = task_id[len(f"case-1:{sid}:"):]
    ok = task_id.startswith(f"case-1:{sid}:") and rest.isascii() and rest.isdigit()
    assert (authority.refusal(decisions_topic(dept), event, OWNER) is None) == ok


def test_register_syncs_replies_and_other_topics():
    sync = decision("change-1", "police.household_register_sync", "police", kind="register_sync",
                    task_id="sync-abc", outcome="applied")
    assert authority.refusal(decisions_topic("police"), sync, OWNER) is None
    assert authority.refusal(decisions_topic("health"),
                             decision("change-1", "police.household_register_sync", "health",
                                      kind="register_sync", task_id="sync-abc", outcome="applied"), OWNER)
    def reply(rid: str):
        return new_event("RectificationReplied", "case-1", {"rectification_id": rid, "department": "police",
                                                             "reply": "已整改"},
                         actor=Actor("staff_police", "department", "department"), region_code="440203")

    assert authority.refusal(decisions_topic("police"), reply("rect-police-0a1b2c"), OWNER) is None
    assert authority.refusal(decisions_topic("health"), reply("rect-police-0a1b2c"), OWNER), \
        "a reply in another department's name"
    assert authority.refusal(decisions_topic("police"), reply("rect-health-0a1b2c"), OWNER), \
        "a reply on another department's rectification"
    assert authority.refusal(decisions_topic("police"), reply("rect-0a1b2c"), OWNER), "an id of no department"
    submitted = submission("case-1")
    assert authority.refusal(decisions_topic("police"), submitted, OWNER), "a department does not submit"
    # the platform's own topics are the brokers' ACLs' business, not this rule's
    assert authority.refusal("applications", submitted, OWNER) is None


def test_a_grants_answer_is_the_executing_departments_on_its_own_key():
    """免申即享: the answer to a grant's task (projectors/proactive.py sends it) names the department's
    own service — the catalog's, or `<department>.<benefit>` — and the task id of the grant it is
    keyed by; another department, another's service or another grant's id is refused."""
    grant = "0b7c1d2e-0000-5000-8000-000000000001"

    def answer(sid: str, dept: str, task_id: str = f"grant:{grant}"):
        return decision(grant, sid, dept, kind="benefit_grant", task_id=task_id, outcome="applied")

    assert authority.refusal(decisions_topic("civil_affairs"), answer("civil_affairs.senior_allowance",
                                                                      "civil_affairs"), OWNER) is None
    assert authority.refusal(decisions_topic("medical_insurance"), answer("medical_insurance.enrolment",
                                                                          "medical_insurance"), OWNER) is None
    assert authority.refusal(decisions_topic("health"), answer("civil_affairs.senior_allowance", "health"), OWNER)
    assert authority.refusal(decisions_topic("health"), answer("medical_insurance.enrolment", "health"), OWNER)
    assert authority.refusal(decisions_topic("civil_affairs"), answer("civil_affairs.senior_allowance",
                                                                      "civil_affairs", "grant:another"), OWNER)
    assert authority.refusal(decisions_topic("civil_affairs"), answer("civil_affairs.senior_allowance",
                                                                      "civil_affairs", f"{grant}:x:1"), OWNER)


def test_a_reason_never_quotes_what_a_forger_chose():
    forged = decision("case-1", "110101199003071234", "health")
    reason = authority.refusal(decisions_topic("health"), forged, OWNER)
    assert reason and "110101199003071234" not in reason and "an id of 18 characters" in reason


# -- against the broker -------------------------------------------------------------------------------
@pytest.fixture
def admin(database_url):
    migrations.migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


class DispatchOn(Dispatch):
    """Dispatch reading a submission topic of the test's own and the real decision topics of two
    departments, emitting its tasks to a topic of the test's own (no adapter answers them)."""

    def __init__(self, name: str, inbox: str, outbox: str, departments: list[str]):
        super().__init__(CAT)
        self.name = self.group = name
        self.topics = (inbox, *(decisions_topic(d) for d in departments))
        self.outbox = outbox

    def fold(self, state, event):
        after, derived = super().fold(state, event)
        return after, [(self.outbox, d) for _topic, d in derived]


@pytest.mark.broker
@pytest.mark.postgres
def test_a_forged_decision_is_dead_lettered_and_the_owner_still_decides(bootstrap, database_url, admin):
    run = uuid.uuid4().hex[:8]
    topics = Topics(bootstrap)
    schema = f"authority_{run}"
    workers: list[Worker] = []
    case_id = f"case-auth-{run}"
    try:
        inbox, outbox = topics.make(f"authority-{run}.applications", f"authority-{run}.tasks")
        departments = ["disease_control", "health"]
        dispatch = DispatchOn(f"authority_{run}_dispatch", inbox, outbox, departments)
        case_view.create_schema(admin, schema)
        view = ProjectionProcessor(CaseViewProjection(f"authority_{run}_view", schema=schema,
                                                      topics=dispatch.topics, catalog=CAT))
        for p in (dispatch, view):
            seed_offsets(bootstrap, database_url, p.name, p.topics)
            workers.append(Worker(p, bootstrap, database_url, poll_ms=300))
        for w in workers:
            w.ready(30)
        dl_since = end_offsets(bootstrap, [DEADLETTER])

        sent = produce(bootstrap, [(inbox, submission(case_id))])
        for w in workers:
            drive(w, database_url, ends_of(sent))
        forged = [
            # health rejects disease control's service, on health's own topic
            (decisions_topic("health"), decision(case_id, VACCINATION, "health")),
            # health claims to be disease control (on its own topic: the only one it may write)
            (decisions_topic("health"), decision(case_id, VACCINATION, "disease_control")),
            # a system actor on disease control's topic
            (decisions_topic("disease_control"), decision(case_id, VACCINATION, "disease_control", role="system")),
        ]
        genuine = decision(case_id, VACCINATION, "disease_control", outcome="approved")
        sent = produce(bootstrap, [*forged, (decisions_topic("disease_control"), genuine)])
        for w in workers:
            drive(w, database_url, ends_of(sent))

        # the decisions topics are the real ones, which other tests of the lane write to meanwhile:
        # the letters of this test are those of the forged messages' own offsets
        ours = {(m.topic, m.partition, m.offset) for m in sent[:len(forged)]}
        for w in workers:
            letters = [d for d in dead_letters(bootstrap, dl_since, w.group) if (
                d.payload["origin_topic"], d.payload["origin_partition"], d.payload["origin_offset"]) in ours]
            assert len(letters) == len(forged), [d.payload["reason"] for d in letters]
            assert all(d.payload["reason"].startswith("decision.not_authorised: ") for d in letters)
            assert {d.payload["origin_topic"] for d in letters} == {decisions_topic("health"),
                                                                   decisions_topic("disease_control")}
        state = admin.execute("SELECT state FROM dispatch_cases WHERE case_id = %s", (case_id,)).fetchone()[0]
        assert state["services"][VACCINATION]["status"] == "approved"
        shown = {s["service_id"]: s["status"] for s in read_case(admin, case_id, schema=schema, catalog=CAT)["services"]}
        assert shown[VACCINATION] == "approved", "the applicant never sees the forged rejection"
    finally:
        for w in workers:
            w.close()
        forget(admin, *(w.name for w in workers))
        admin.execute("DELETE FROM dispatch_cases WHERE case_id = %s", (case_id,))
        drop_schema(admin, schema)
        topics.delete()
