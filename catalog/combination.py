"""随意组合: an application for services picked freely, not a bundle — what the list means, how a
case of one is named, and the errors a person can act on when the list is wrong.

Why it needs a name of its own: a case's events carry `bundle_code` (a string every reader keys
on), and a free combination has none. It carries `COMBINATION` instead, with its services in
`ApplicationSubmitted.services` — which is all dispatch needs (projectors/case_state.py finds the
DAG from the case's services and the catalog, never from the bundle). What a bundle adds is then
absent, on purpose: no promised limit of a bundle (each service runs on its statutory limit), no
牵头部门 (a bad rating goes to every department of the case).

Pure functions over the catalog.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .form import Selection, SelectionError, select
from .model import Catalog, Label

__all__ = ["COMBINATION", "MAX_SERVICES", "ServiceError", "parse_services", "check_services", "combination_label"]

#: the `bundle_code` of a case applied for as a free combination
COMBINATION = "combination"
MAX_SERVICES = 40


@dataclass(frozen=True)
class ServiceError:
    """One problem with the list: where (`path`), what (`code`), and why in both languages.
    Messages name services by their catalog id and label, never anything a person typed
    beyond an id that is not in the catalog (an id is not personal data)."""
    path: str
    code: str
    message_zh: str
    message_en: str


def parse_services(text: str | None) -> list[str]:
    """`a,b, c` → ['a', 'b', 'c'] (blanks dropped), for `?services=` in a URL."""
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _bundles_of(catalog: Catalog, service_id: str) -> list[str]:
    return [b.code for b in catalog.bundles.values() if b.modelled and service_id in b.services]


def check_services(catalog: Catalog, services: Iterable[str], path: str = "services"
                   ) -> tuple[Selection | None, list[ServiceError]]:
    """The selection of a free combination, or every error of the list at once."""
    ids = list(services)
    errors: list[ServiceError] = []
    if not ids:
        errors.append(ServiceError(path, "services.empty", "请至少选择一个事项", "pick at least one service"))
    if len(ids) > MAX_SERVICES:  # said once, not once per service of a list that long
        return None, [ServiceError(path, "services.too_many", f"一次最多选择{MAX_SERVICES}个事项",
                                   f"at most {MAX_SERVICES} services in one application")]
    seen: set[str] = set()
    for i, sid in enumerate(ids):
        where = f"{path}[{i}]"
        if not isinstance(sid, str) or not sid:
            errors.append(ServiceError(where, "service.blank", "事项编码不能为空", "a service id cannot be blank"))
            continue
        if sid in seen:
            errors.append(ServiceError(where, "service.duplicate", f"事项“{sid}”重复选择了",
                                       f"service {sid!r} is picked twice"))
            continue
        seen.add(sid)
        svc = catalog.services.get(sid)
        if svc is None:
            errors.append(ServiceError(
                where, "service.unknown", f"事项目录中没有编码为“{sid[:80]}”的事项（可在 GET /api/v1/bundles 查看各一件事的事项）",
                f"no service {sid[:80]!r} in the catalog (the services of each bundle: GET /api/v1/bundles)"))
        elif not _bundles_of(catalog, sid):
            errors.append(ServiceError(
                where, "service.not_available", f"事项“{svc.label.zh}”尚未开通网上办理",
                f"service {svc.label.en!r} cannot be applied for online yet"))
    if errors:
        return None, errors
    try:
        return select(catalog, services=ids), []
    except SelectionError as exc:
        return None, [ServiceError(path, "services.not_combinable", f"这些事项不能一起申请：{exc}",
                                   f"these services cannot be applied for together: {exc}")]


def combination_label(catalog: Catalog, services: Iterable[str], shown: int = 2) -> Label:
    """How a case of a free combination is named: its first services and how many there are."""
    ids = [s for s in services if s]
    labels = [catalog.services[s].label if s in catalog.services else Label(s, s) for s in ids]
    if not labels:
        return Label("自选事项", "Services of your choice")
    head_zh, head_en = "、".join(lb.zh for lb in labels[:shown]), ", ".join(lb.en for lb in labels[:shown])
    if len(labels) > shown:
        return Label(f"自选事项：{head_zh}等{len(labels)}项", f"Your services: {head_en} and {len(labels) - shown} more")
    return Label(f"自选事项：{head_zh}", f"Your services: {head_en}")
