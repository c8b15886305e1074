"""谁查看了我的数据: the read audit as the applicant and the supervisor see it.

- `GET /cases/{case_id}/reads` — the applicant (their own login or the case's status link,
  `own_case`): who read this case's data — the department (its name from the catalog), the staff
  role (never the staff member's name or id), when, why in words, and what (field and material
  names). Their own login also sees the reads of them outside any case (e-licences fetched while a
  clerk filed for them, register entries); the status link, bound to one case, only that case's.
  The same reader, role and purpose on one day is one line with a count.
- `GET /reads?staff_id=…` — a supervisor: what one staff member read, read by read (subjects as
  pseudonymous tokens). The supervisor's query is not itself recorded: it shows no personal data.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query

from catalog.model import Catalog
from projectors import read_audit

from . import identity
from .api_access import SeenCase, caller, own_case, supervisor
from .api_errors import ApiRoute, no_store
from .api_state import ApiState, api_state, label

router = APIRouter(prefix="/api/v1", route_class=ApiRoute)

ROLES = {"department": ("部门工作人员", "Department staff"), "clerk": ("窗口工作人员", "Service-window clerk"),
         "supervisor": ("督办人员", "Supervisor"), "register": ("登记机关工作人员", "Register staff"),
         "system": ("系统运维人员", "Operations staff")}
OFFICES = {"clerk": ("政务服务窗口", "Government service window"), "supervisor": ("督办窗口", "Supervision office"),
           "register": ("登记机关", "Register office"), "system": ("系统运维", "Operations")}
KINDS = {"case_view": ("查看办件", "Viewed the case"), "worklist": ("待办列表中列出", "Listed in a worklist"),
         "escalation": ("查看反映", "Viewed your report"), "rectification": ("查看评价整改", "Viewed a rectification"),
         "e_license": ("调取电子证照", "Fetched e-licences"), "register_entry": ("查看登记信息", "Viewed a register entry"),
         "cascade_change": ("查看登记变更", "Viewed a register change"), "document": ("下载材料", "Downloaded a document"),
         "dead_letter": ("查看处理失败的消息", "Viewed a message that failed processing")}
EXTRA_FIELDS = {"legal_representative_name": ("法定代表人姓名", "legal representative's name"),
                "legal_representative_resident_id": ("法定代表人身份号码", "legal representative's resident ID")}


def _zh_en(pair: tuple[str, str]) -> dict[str, str]:
    return {"zh": pair[0], "en": pair[1]}


def purpose_words(purpose: str, service: dict[str, str] | None) -> dict[str, str]:
    """Why, in words a citizen reads."""
    zh_s, en_s = (f"「{service['zh']}」", f"“{service['en']}”") if service else ("本件事项", "this case")
    words = {"task": (f"办理{zh_s}", f"to handle {en_s}"),
             "worklist": (f"办理{zh_s}的待办列表", f"the worklist for {en_s}"),
             "escalation": ("处理您的办不成事反映", "to handle your report (办不成事)"),
             "rectification": ("对您的差评进行整改", "to rectify after your rating"),
             "filing": ("代您申报时调取", "while filing for you"),
             "correction": ("代您补正时调取", "while correcting for you"),
             "register": ("核对登记信息", "to check a register entry"),
             "cascade": ("同步登记变更（一处变更、多处联动）", "to sync a register change"),
             "operations": ("排查系统故障", "to fix a processing failure")}
    zh, en = words.get(purpose, (purpose, purpose))
    return {"zh": zh, "en": en}


def _field_label(catalog: Catalog, field_id: str) -> dict[str, str]:
    thing = catalog.fields.get(field_id) or catalog.materials.get(field_id)
    if thing is not None:
        return label(thing.label)
    return _zh_en(EXTRA_FIELDS.get(field_id, (field_id, field_id)))


def shown(row: dict[str, Any], catalog: Catalog) -> dict[str, Any]:
    """One line of 谁查看了我的数据: no staff id, no route, no correlation id."""
    dept, role = row["department"], row["role"]
    office = (label(catalog.departments[dept].label) if dept in catalog.departments
              else _zh_en(OFFICES.get(role, (dept or role, dept or role))))
    service = catalog.services.get(row["service_id"]) if row["service_id"] else None
    service_label = label(service.label) if service else None
    return {"department": dept, "department_label": office, "role": role,
            "role_label": _zh_en(ROLES.get(role, (role, role))), "kind": row["kind"],
            "kind_label": _zh_en(KINDS.get(row["kind"], (row["kind"], row["kind"]))),
            "case_id": row["case_id"], "service_id": row["service_id"], "service_label": service_label,
            "purpose": row["purpose"], "purpose_id": row["purpose_id"],
            "purpose_label": purpose_words(row["purpose"], service_label),
            "fields": list(row["fields"]), "field_labels": [_field_label(catalog, f) for f in row["fields"]],
            "first_at": row["first_at"], "last_at": row["last_at"], "times": row["times"]}


@router.get("/cases/{case_id}/reads", tags=["cases"],
            summary="谁查看了我的数据: who read this case's data — department, staff role, when, why (the applicant)")
def case_reads(case_id: str, seen: SeenCase = Depends(own_case), ident: identity.Identity = Depends(caller),
               state: ApiState = Depends(api_state)):
    subject = seen.view["applicant_token"] if seen.view is not None else seen.row.applicant_token
    with state.database.connection() as conn:
        rows = read_audit.case_reads(conn, subject, case_id, uncased=not ident.read_only)
    return no_store({"case_id": case_id, "reads": [shown(r, state.catalog) for r in rows]})


@router.get("/reads", tags=["read audit"], summary="What one staff member read, newest first (a supervisor)")
def staff_reads(staff_id: str = Query(..., min_length=1, max_length=64, description="the staff member's work number"),
                since: datetime | None = Query(None), until: datetime | None = Query(None),
                limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
                _sup: identity.Identity = Depends(supervisor), state: ApiState = Depends(api_state)):
    with state.database.connection() as conn:
        total, rows = read_audit.staff_reads(conn, staff_id, since=since, until=until, limit=limit, offset=offset)
    return no_store({"staff_id": staff_id, "total": total, "offset": offset, "items": rows})
