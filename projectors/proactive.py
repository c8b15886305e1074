"""The proactive processor (免申即享 / 主动服务): life events become offers, grants and pre-service lists.

One more fold on the runtime (projectors/runtime.py), with its own consumer group `proactive`:

- `process` reads register events (`registry.person`, `registry.company`), the decisions its rules
  listen to (`decisions.<d>`: the police registered a birth, 人社 approved a pension), the
  submissions on `applications` (what each person applied for: `not_applied` conditions and the
  applicant of a case) and `proactive` itself (acceptances and declines from the API; its own
  offers, so the inbox can be rebuilt from the log);
- `tick` is the daily date scan (the 60th / 80th birthday, the retirement age, 30 days before a
  soldier's discharge) over the e-licence library, on working days only, and the lapse of offers
  nobody answered, and it tells each department of the grants whose decline window closed without a
  decline: a TaskDispatched of kind `benefit_grant` on `tasks.<d>` (task id `grant:<item id>`, event id
  derived from the item, `task_sent_on` written in the same checkpoint: sent once). A decline read
  after that withdraws it (TaskCancelled); the department's answer on `decisions.<d>` is kept as
  `task_outcome`. `ONETHING_TODAY` pins its day (projectors/deadlines.today_in_china).

Every item is a row of `proactive_items` keyed by a name-based id of (rule, subject, trigger)
(projectors/proactive_plan.py); the row and the event are written in one checkpoint, and an id
already there is never made again, so a replay of the registers from the start, a second scan
or a restarted member offers nothing twice, and a declined or lapsed offer stays so.

Personal data: the events carry pseudonymous tokens, field ids and dates only. The prefilled
values are read from the e-licence library by their own holder when the inbox is opened
(producers/api_inbox.py), so there is nothing personal on `proactive` to seal.
"""
from __future__ import annotations

import os
import time
import uuid
from datetime import date

import structlog
from psycopg.types.json import Jsonb
from prometheus_client import Counter

from catalog.loader import load_catalog
from catalog.model import Catalog
from catalog.proactive_rules import Rule, Rules, default_rules
from catalog.working_days import is_working_day
from events import personal
from events.envelope import Event
from infra import keystore
from infra.topics import APPLICATIONS, PROACTIVE, REGISTRY_COMPANY, REGISTRY_PERSON, decisions_topic, tasks_topic
from producers import e_license, identity

from . import proactive_plan as pp
from .checkpoint import Step
from .deadlines import today_in_china
from .runtime import BaseProcessor

log = structlog.get_logger(__name__)

NAME = "proactive"
ITEMS = Counter("onething_proactive_items_total", "Offers, grants and pre-service lists made, by rule and outcome",
                ["rule", "outcome"])
ANSWERS = Counter("onething_proactive_answers_total", "Items accepted, declined or lapsed, by rule", ["rule", "state"])
GRANT_TASKS = Counter("onething_proactive_grant_tasks_total", "Grants told to their department on tasks.<d> after "
                      "the decline window (sent), or withdrawn after a late-read decline (cancelled), by rule",
                      ["rule", "event"])
HANDLED = frozenset({"RegisterChanged", "DecisionRecorded", "ApplicationSubmitted", "OfferAccepted", "OfferDeclined",
                     "ServiceOffered", "BenefitGranted", "OfferLapsed"})

_INSERT = (
    "INSERT INTO proactive_items (item_id, rule, outcome, recipient_token, subject_token, trigger_kind, trigger_key, "
    "trigger_on, bundle_code, services, prefilled_fields, presets, items, department, service_id, benefit, state, "
    "made_on, available_on, closes_on, region_code, event_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
    "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING item_id")


class BadAnswer(ValueError):
    """An answer on `proactive` that cannot be an answer to an item. Its message names no value."""
    safe_message = True


class ProactiveProcessor(BaseProcessor):
    """The rules on register events, decisions and a daily date scan (see the module's docstring)."""
    dedupe = True
    event_types = HANDLED

    def __init__(self, rules: Rules | None = None, catalog: Catalog | None = None, *, name: str = NAME,
                 tick_s: float | None = None, scan_every_s: float | None = None):
        self.catalog = catalog or load_catalog()
        self.rules = rules or default_rules()
        self.name = self.group = name
        self.topics = (REGISTRY_PERSON, REGISTRY_COMPANY, APPLICATIONS, PROACTIVE,
                       *(decisions_topic(d) for d in self.rules.listened_departments(self.catalog)))
        self.tick_s = tick_s if tick_s is not None else float(os.environ.get("ONETHING_PROACTIVE_TICK_S") or 60)
        self.scan_every_s = scan_every_s if scan_every_s is not None else float(
            os.environ.get("ONETHING_PROACTIVE_SCAN_S") or 3600)
        self._last_scan: tuple[date, float] | None = None

    # -- events ---------------------------------------------------------------------------------
    def process(self, step: Step) -> None:
        conn, today = step.conn, today_in_china()
        made: list[pp.Plan] = []
        answered: list[tuple[str, str]] = []
        for item in step.items:
            e = item.event
            if e.type == "ApplicationSubmitted":
                self._on_submitted(conn, e, today, step, made)
            elif e.type == "RegisterChanged":
                self._on_register(conn, e, today, step, made)
            elif e.type == "DecisionRecorded":
                self._on_decision(conn, e, today, step, made)
            elif e.type in ("OfferAccepted", "OfferDeclined"):
                try:
                    answer = self._on_answer(conn, e, step)
                except BadAnswer as exc:   # parked here, not by re-running the whole batch one by one
                    step.dead_letter(self.group, item, f"BadAnswer: {exc}")
                    continue
                if answer:
                    answered.append(answer)
            else:
                self._on_own(conn, e)
        step.on_commit(lambda: self._observe(made, answered))

    def _observe(self, made: list[pp.Plan], answered: list[tuple[str, str]]) -> None:
        for p in made:
            ITEMS.labels(p.rule.code, p.outcome).inc()
        for rule, state in answered:
            ANSWERS.labels(rule, state).inc()

    def _on_submitted(self, conn, e: Event, today: date, step: Step, made: list) -> None:
        p = e.payload
        applicant = _applicant_of(e)
        if not applicant:
            return
        conn.execute("INSERT INTO proactive_cases (case_id, applicant_token, bundle_code, services, region_code) "
                     "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                     (e.key, applicant, p.get("bundle_code") or "", list(p.get("services") or ()),
                      e.envelope.region_code))
        pending = conn.execute("DELETE FROM proactive_pending WHERE case_id = %s RETURNING rule, trigger_key, "
                               "region_code, occurred_on", (e.key,)).fetchall()
        for code, key, region, occurred_on in pending:
            rule = self.rules.get(code)
            if rule is not None:
                self._make(conn, rule, step, made, today, subject=applicant, recipient=applicant,
                           trigger_kind="decision", trigger_key=key, trigger_on=occurred_on, region=region, cause=e)

    def _on_register(self, conn, e: Event, today: date, step: Step, made: list) -> None:
        for rule in self.rules.by_trigger("register"):
            if not pp.register_matches(rule.trigger, e.payload):
                continue
            subject = e.key
            recipient = self._recipient(conn, rule, subject, e)
            if recipient is None:
                continue
            self._make(conn, rule, step, made, today, subject=subject, recipient=recipient, trigger_kind="register",
                       trigger_key=f"{rule.trigger.change_kind}:{e.envelope.sequence}",
                       trigger_on=_china_day(e), region=e.envelope.region_code, cause=e,
                       changes=e.payload.get("changes") or {})

    def _on_decision(self, conn, e: Event, today: date, step: Step, made: list) -> None:
        if pp.is_grant_answer(e.payload):   # a department's answer to a grant's task (the tick sent it)
            self._on_grant_answer(conn, e)
            return
        for rule in self.rules.by_trigger("decision"):
            if not pp.decision_matches(rule.trigger, e.payload):
                continue
            key = f"{e.key}:{rule.trigger.service}"
            row = conn.execute("SELECT applicant_token FROM proactive_cases WHERE case_id = %s", (e.key,)).fetchone()
            if row is None:  # the submission is on another topic and not read yet: wait for it
                conn.execute("INSERT INTO proactive_pending (case_id, rule, trigger_key, event_id, region_code, "
                             "occurred_on) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                             (e.key, rule.code, key, e.id, e.envelope.region_code, _china_day(e)))
                continue
            self._make(conn, rule, step, made, today, subject=row[0], recipient=row[0], trigger_kind="decision",
                       trigger_key=key, trigger_on=_china_day(e), region=e.envelope.region_code, cause=e)

    def _on_answer(self, conn, e: Event, step: Step) -> tuple[str, str] | None:
        """The recipient's answer, from the API (which checked it was theirs and still open).
        An answer naming no item id at all is refused (and dead-lettered by the runtime). A grant
        declined within its window whose task a tick sent already (this member read the decline
        late) has the task withdrawn: TaskCancelled on tasks.<d>."""
        p = e.payload
        try:
            uuid.UUID(str(p.get("offer_id")))
        except ValueError:
            raise BadAnswer(f"{e.type} names no offer id (a UUID)") from None
        if e.type == "OfferAccepted":
            row = conn.execute(
                "UPDATE proactive_items SET state = 'accepted', case_id = %s, receipt_no = %s, updated_at = now() "
                "WHERE item_id = %s AND recipient_token = %s AND state IN ('offered', 'lapsed') RETURNING rule",
                (p["case_id"], p["receipt_no"], p["offer_id"], e.key)).fetchone()
            return (row[0], "accepted") if row else None
        row = conn.execute(
            "UPDATE proactive_items SET state = 'declined', decline_reason = %s, updated_at = now(), "
            "task_cancelled_on = CASE WHEN task_sent_on IS NOT NULL THEN %s::date END "
            "WHERE item_id = %s AND recipient_token = %s AND state IN ('offered', 'granted') "
            f"RETURNING rule, task_sent_on IS NOT NULL, {_GRANT_COLUMNS}",
            (p.get("reason_code"), today_in_china(), p["offer_id"], e.key)).fetchone()
        if row is None:
            return None
        if row[1]:
            g = _grant(row[2:])
            step.emit(tasks_topic(g.department), pp.grant_cancelled(g))
            step.on_commit(lambda: GRANT_TASKS.labels(g.rule, "cancelled").inc())
            log.info("proactive.grant_task_cancelled", rule=g.rule, item_id=g.item_id, department=g.department)
        return (row[0], "declined")

    def _on_grant_answer(self, conn, e: Event) -> None:
        """The department's answer to a grant's task (kind benefit_grant, on its own decisions.<d>: the
        runtime's authority check saw to that): kept for the worklist and the inbox. `accepted` is
        only the receipt, so it never overwrites a final answer read before it."""
        p = e.payload
        conn.execute(
            "UPDATE proactive_items SET task_outcome = %s, task_decided_at = %s, updated_at = now() "
            "WHERE item_id::text = %s AND outcome = 'grant' AND department = %s "
            "AND (%s <> 'accepted' OR task_outcome IS NULL)",
            (p.get("outcome"), e.envelope.occurred_at, p["task_id"].removeprefix(pp.GRANT_TASK_PREFIX),
             p.get("department"), p.get("outcome")))

    def _on_own(self, conn, e: Event) -> None:
        """Its own events read back: a rebuild of the inbox from the log gets the rows again
        (a date-triggered item cannot be re-derived once its day has passed)."""
        p = e.payload
        if e.type == "OfferLapsed":
            conn.execute("UPDATE proactive_items SET state = 'lapsed', updated_at = now() "
                         "WHERE item_id = %s AND state = 'offered'", (p["offer_id"],))
            return
        rule = self.rules.get(p["rule"])
        grant = e.type == "BenefitGranted"
        conn.execute(_INSERT, (
            p["offer_id"], p["rule"], "grant" if grant else p["outcome"], e.key, p["subject_token"], p["trigger_kind"],
            p["trigger_key"], p.get("trigger_on"), None if grant else p["bundle_code"],
            [] if grant else list(p["services"]), [] if grant else list(p["prefilled_fields"]),
            Jsonb({} if grant else dict(p.get("presets") or {})), Jsonb([] if grant else list(p.get("items") or [])),
            p.get("department"), p.get("service_id"),
            Jsonb({"code": p["benefit_code"], "zh": p["benefit_zh"], "en": p["benefit_en"]}) if grant else None,
            "granted" if grant else "offered", p["granted_on"] if grant else p["offered_on"],
            p["granted_on"] if grant else p["available_on"], p["decline_until"] if grant else p["lapses_on"],
            e.envelope.region_code, e.id))
        if rule is None:
            log.warning("proactive.unknown_rule", rule=p["rule"][:60])

    # -- making an item -------------------------------------------------------------------------
    def _recipient(self, conn, rule: Rule, subject: str, e: Event | None) -> str | None:
        if rule.to == "subject":
            return subject
        if rule.to == "spouse":
            row = conn.execute(
                "SELECT h2.holder_token FROM e_license_holders h1 JOIN e_licenses l USING (licence_no) "
                "JOIN e_license_holders h2 USING (licence_no) WHERE l.kind = 'marriage_certificate' "
                "AND h1.holder_token = %s AND h2.holder_token <> %s ORDER BY l.issued_on DESC LIMIT 1",
                (subject, subject)).fetchone()
            return row[0] if row else None
        if rule.to == "legal_representative":
            rid = (e.payload.get("changes") or {}).get("legal_representative_resident_id") if e else None
            if not rid:
                row = conn.execute("SELECT record->>'legal_representative_resident_id' FROM register_keys "
                                   "WHERE register = 'company' AND register_key = %s", (subject,)).fetchone()
                rid = row[0] if row else None
            if personal.is_sealed(rid):  # sealed under the representative's own key: whose it is names them
                return keystore.key_subject(conn, personal.key_id_of(rid) or "")  # None once erased
            return identity.subject_token(rid) if rid else None  # a change recorded before sealing
        return None

    def _facts(self, conn, token: str) -> pp.Facts:
        applied = {s for (s,) in conn.execute(
            "SELECT DISTINCT unnest(services) FROM proactive_cases WHERE applicant_token = %s", (token,))}
        kinds = {k for (k,) in conn.execute(
            "SELECT DISTINCT l.kind FROM e_license_holders h JOIN e_licenses l USING (licence_no) "
            "WHERE h.holder_token = %s AND (l.valid_until IS NULL OR l.valid_until >= current_date)", (token,))}
        row = conn.execute("SELECT record->>'status' FROM register_keys WHERE register = 'person' "
                           "AND register_key = %s", (token,)).fetchone()
        return pp.Facts(frozenset(applied), frozenset(kinds), bool(row and row[0] == "deceased"))

    def _make(self, conn, rule: Rule, step: Step, made: list, today: date, *, subject: str, recipient: str,
              trigger_kind: str, trigger_key: str, trigger_on: date | None, region: str, cause: Event | None,
              changes: dict | None = None, expiries: dict | None = None) -> None:
        iid = pp.item_id(rule.code, subject, trigger_key)
        if conn.execute("SELECT 1 FROM proactive_items WHERE item_id = %s", (iid,)).fetchone():
            return  # made before: a replay, a second scan, or declined / lapsed for this trigger
        facts = self._facts(conn, recipient)
        if not pp.eligible(rule, facts):
            return
        services, prefilled, items = (), (), ()
        if rule.outcome.kind == "grant":
            if rule.outcome.service:
                services = (rule.outcome.service,)
        elif rule.outcome.kind == "offer":
            services = tuple(self.catalog.bundle(rule.bundle).services)
            prefilled = self._prefillable(conn, rule, recipient, subject, changes or {})
        else:
            items = tuple(pp.list_items(rule, expiries or {}, trigger_on or today))
            services = tuple(i.service for i in items)
            prefilled = self._prefillable(conn, rule, recipient, subject, changes or {})
            if not items:
                return
        p = pp.plan(rule, subject=subject, recipient=recipient, trigger_kind=trigger_kind, trigger_key=trigger_key,
                    trigger_on=trigger_on, today=today, region_code=region or "000000", services=services,
                    prefilled_fields=prefilled, items=items)
        event = pp.item_event(p, cause)
        o = rule.outcome
        inserted = conn.execute(_INSERT, (
            p.item_id, rule.code, p.outcome, recipient, subject, trigger_kind, trigger_key, trigger_on,
            rule.bundle if p.outcome != "grant" else None, list(services), list(p.prefilled_fields), Jsonb(p.presets),
            Jsonb([{"service_id": i.service, "reason_zh": i.zh, "reason_en": i.en} for i in items]),
            o.department, o.service,
            Jsonb({"code": o.benefit.code, "zh": o.benefit.zh, "en": o.benefit.en}) if o.benefit else None,
            p.state, p.made_on, p.available_on, p.closes_on, p.region_code, event.id)).fetchone()
        if inserted:
            step.emit(PROACTIVE, event)
            made.append(p)
            log.info("proactive.item", rule=rule.code, outcome=p.outcome, trigger=trigger_kind, item_id=p.item_id)

    def _prefillable(self, conn, rule: Rule, recipient: str, subject: str, changes: dict) -> tuple[str, ...]:
        """The field ids of the offered form the government can fill (no values: see the docstring)."""
        form = {f.id for f in self.catalog.merged_form(bundle_code=rule.bundle).fields}
        filled = set(e_license.prefill(e_license.wallet(conn, recipient), form))
        if rule.outcome.subject_fields and e_license.wallet(conn, subject).id_card is not None:
            filled |= set(rule.outcome.subject_fields)
        filled |= {f for f, src in rule.outcome.trigger_fields.items() if changes.get(src)}
        filled |= set(rule.outcome.presets)
        return tuple(sorted(filled & form))

    # -- the daily tick -------------------------------------------------------------------------
    def tick(self, step: Step) -> None:
        today = today_in_china()
        made: list[pp.Plan] = []
        lapsed = self._lapse(step, today)
        self._send_grants(step, today)
        # a decision whose case's submission never came (it was before this processor's history)
        step.conn.execute("DELETE FROM proactive_pending WHERE occurred_on < %s::date - 30", (today,))
        now = time.monotonic()
        due = self._last_scan is None or self._last_scan[0] != today or now - self._last_scan[1] >= self.scan_every_s
        # only once this member holds partitions: the scan answers for the recipients on them
        if due and is_working_day(today) and (step.assignment or not step.partition_counts):
            self.scan(step, today, made)
            self._last_scan = (today, now)
        step.on_commit(lambda: self._observe(made, [(r, "lapsed") for r in lapsed]))

    def _send_grants(self, step: Step, today: date) -> None:
        """免申即享, the department told: every grant whose decline window closed (the last day to
        decline is `closes_on`, as the API checks it) without a decline becomes a task of kind
        benefit_grant on tasks.<d>. `task_sent_on` is set in the checkpoint that sends it, so it is
        sent once; the event id is the item's, so a crash before the commit sends the same event."""
        rows = step.conn.execute(
            "UPDATE proactive_items SET task_sent_on = %s, updated_at = now() WHERE outcome = 'grant' "
            "AND state = 'granted' AND task_sent_on IS NULL AND closes_on < %s "
            f"RETURNING {_GRANT_COLUMNS}", (today, today)).fetchall()
        sent = [_grant(r) for r in rows]
        for g in sent:
            step.emit(tasks_topic(g.department), pp.grant_task(g))
            log.info("proactive.grant_task_sent", rule=g.rule, item_id=g.item_id, department=g.department)

        def observe() -> None:
            for g in sent:
                GRANT_TASKS.labels(g.rule, "sent").inc()

        step.on_commit(observe)

    def _lapse(self, step: Step, today: date) -> list[str]:
        rows = step.conn.execute(
            "UPDATE proactive_items SET state = 'lapsed', updated_at = now() WHERE state = 'offered' "
            "AND closes_on < %s RETURNING item_id::text, rule, recipient_token, region_code", (today,)).fetchall()
        for iid, rule, recipient, region in rows:
            step.emit(PROACTIVE, pp.lapsed_event(iid, rule, recipient, region, today))
        return [r[1] for r in rows]

    def scan(self, step: Step, today: date, made: list | None = None) -> None:
        """Every date rule over the licences it reads: what is due today and not made yet."""
        made = [] if made is None else made
        conn = step.conn
        for rule in self.rules.by_trigger("date"):
            t = rule.trigger
            rows = conn.execute(
                "SELECT h.holder_token, l.data, (SELECT CASE WHEN count(*) = 0 THEN NULL ELSE "
                "coalesce(min(i.valid_until), DATE '9999-12-31') END FROM e_license_holders ih JOIN e_licenses i "
                "USING (licence_no) WHERE ih.holder_token = h.holder_token AND i.kind = 'id_card') "
                "FROM e_licenses l JOIN e_license_holders h USING (licence_no) WHERE l.kind = %s "
                "AND h.relation = 'holder'", (t.licence,)).fetchall()
            for token, data, id_card_until in rows:
                on = pp.trigger_date(t, data or {})
                if on is None or not pp.due(t, on, today):
                    continue
                if step.partition_counts and not step.owns(token, PROACTIVE):
                    continue   # another member's recipient (scale-out): it scans them
                region = (data or {}).get("region_code") or str((data or {}).get("resident_id") or "")[:6]
                self._make(conn, rule, step, made, today, subject=token, recipient=token, trigger_kind="date",
                           trigger_key=pp.date_trigger_key(on), trigger_on=on, region=region, cause=None,
                           expiries={"id_card": id_card_until})


_GRANT_COLUMNS = ("item_id::text, rule, department, service_id, benefit->>'code', subject_token, trigger_kind, "
                  "trigger_key, made_on, closes_on, region_code")


def _grant(row) -> pp.Grant:
    return pp.Grant(*row)


def _applicant_of(e: Event) -> str | None:
    """Whose case it is: the applicant's own token, or the person a clerk filed for."""
    actor = e.envelope.actor
    if actor.role in ("applicant", "clerk"):   # a clerk's envelope names the person filed for
        return actor.id_token
    return None


def _china_day(e: Event) -> date:
    from .deadline_clock import china_date

    return china_date(e.envelope.occurred_at)


def processors() -> list:
    return [ProactiveProcessor()]
