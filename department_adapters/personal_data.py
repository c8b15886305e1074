"""A department's side of crypto-shredding: open its tasks' personal fields, seal its outputs.

The fields and materials of a task, and the outputs of earlier services it waits for, arrive
sealed under the applicant's data key (events/personal.py). The key reaches a department only
wrapped to the department's own public key, for the cases it was sent (infra/keystore.py); the
SDK opens a task with the department's private key (`ONETHING_DEPARTMENT_KEY_<DEPT>`) before the
backend sees it, and seals the outputs it produces (a child's resident ID, a certificate number)
under the same key, so they travel and are kept in ciphertext as the form does. A value whose key
was destroyed opens as 已删除.

A register sync opens the same way: its sealed values (a household address, a legal
representative's name and ID) come under the person's own key, granted to each department that
keeps a copy of them when the register recorded the change (`register:<subject>` rows,
keystore.grant_subject); its outputs (the copy's sequence, field names) are nothing personal and
stay as they are.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import psycopg

from events import personal
from events.envelope import Event
from infra import keystore


class DepartmentKeys:
    def __init__(self, department: str):
        self.department = department
        self._conn: psycopg.Connection | None = None
        self._keys = keystore.department_keys(lambda: nullcontext(self._conn), department)
        self.sealing = keystore.sealing_on()  # off only for `onething bench --sealing-ab`, in development

    def bind(self, conn: psycopg.Connection) -> "DepartmentKeys":
        """Read keys through `conn` (the batch's own transaction)."""
        self._conn = conn
        return self

    def open_task(self, task: Event) -> Event:
        p = task.payload
        fields, inputs = p.get("fields") or {}, p.get("inputs") or {}
        materials = p.get("materials") or []
        if not (personal.key_ids(fields) or personal.key_ids(inputs)
                or any(personal.is_sealed(m.get("ref")) for m in materials)):
            return task
        keys = personal.Opener(self._keys)  # the task's key looked up once
        opened = {
            **p,
            "fields": personal.open_fields(keys, fields),
            "inputs": personal.open_fields(keys, inputs),
            "materials": [m | {"ref": personal.open_value(keys, f"materials.{m['code']}.ref", m["ref"])}
                          if personal.is_sealed(m.get("ref")) else m for m in materials],
        }
        return replace(task, payload=opened)

    def seal_outputs(self, task: Event, outputs: dict[str, str]) -> dict[str, str]:
        """Outputs under the case's data key — the one its fields came sealed with, else the one
        granted for the case; as they are if the case came with none (a case accepted before
        personal data was sealed, a register sync)."""
        if not outputs or self._conn is None or not self.sealing:
            return outputs
        p = task.payload
        if p.get("kind") == "register_sync":  # a copy's sequence and field names: nothing of the person
            return outputs
        carried = personal.key_ids(p.get("fields") or {}) | personal.key_ids(p.get("inputs") or {})
        key_id = next(iter(carried)) if len(carried) == 1 else keystore.case_key_id(self._conn, self.department,
                                                                                       task.key)
        if key_id is None:
            return outputs
        key = self._keys(key_id)
        if key is None:  # erased: nothing of the subject is written in clear
            return {k: personal.ERASED for k in outputs}
        return {k: v if personal.is_sealed(v) else personal.seal(key, key_id, k, v) for k, v in outputs.items()}
