"""The intake side of crypto-shredding: what a citizen submits leaves the API sealed.

A submission's personal fields (the catalog's `pii`) and its materials' references (e-licence
numbers, document ids) are sealed under the applicant's data key (events/personal.py,
infra/keystore.py) in the transaction that records the case, and the key is wrapped for each
department the case goes to — so dispatch, the topics, the dead letters and the read models only
ever hold ciphertext, and a department opens only the fields of its own tasks. Opening for the
status page goes through `opener`, on the API's own role.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from catalog.model import Catalog
from events import personal
from infra import keystore

from . import intake_store


def personal_field(catalog: Catalog):
    fields = catalog.fields

    def is_personal(field_id: str) -> bool:
        f = fields.get(field_id)
        return f is None or f.pii  # a field the catalog does not know is sealed, not guessed about

    return is_personal


def seal_submission(conn: psycopg.Connection, state, subject: str, case_id: str, form: dict[str, str],
                    materials: list[dict[str, Any]], departments: Iterable[str]) -> tuple[dict[str, str], list[dict]]:
    """(form, materials) as the event carries them; the subject's key granted to `departments`."""
    if not keystore.sealing_on():  # `onething bench --sealing-ab` measuring without it (development only)
        intake_store.record_uses(conn, case_id, subject, materials)
        return dict(form), list(materials)
    key_id, key = keystore.subject_key(conn, subject, state.master_keys())
    keystore.grant(conn, case_id, key_id, key, departments)
    intake_store.record_uses(conn, case_id, subject, materials)  # who may download them (api_documents.py)
    sealed = personal.seal_fields(key, key_id, form, personal_field(state.catalog))
    refs = [m | {"ref": personal.seal(key, key_id, f"materials.{m['code']}.ref", m["ref"])}
            if m.get("ref") and not personal.is_sealed(m["ref"]) else m for m in materials]
    return sealed, refs


def opened(state, values: dict[str, str]) -> dict[str, str]:
    """Sealed values opened for a reader the route already allowed (已删除 once erased)."""
    if not personal.key_ids(values):
        return dict(values)
    return personal.open_fields(state.platform_keys(), values)


def shown_view(state, view: dict[str, Any], ident) -> dict[str, Any]:
    """The case view as its reader gets it: outputs opened — and for a department only those of
    its own services and those its services wait for (a disease-control clerk does not see the
    child's resident ID the police issued unless a service of its own needs it)."""
    services = view.get("services") or []
    allowed: set[str] | None = None
    if ident.role == "department":
        from projectors.case_state import awaited_outputs

        ids = [s["service_id"] for s in services]
        allowed = {o for s in services if s.get("department") == ident.department
                   for o in awaited_outputs(state.catalog, s["service_id"], ids)}
    shown = []
    for s in services:
        outputs = dict(s.get("outputs") or {})
        if allowed is not None and s.get("department") != ident.department:
            outputs = {k: v for k, v in outputs.items() if k in allowed}
        shown.append(s | {"outputs": opened(state, outputs)})
    return view | {"services": shown}
