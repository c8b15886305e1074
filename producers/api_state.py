"""What the intake app's routes share — settings, the connection pool, the Kafka producer, the
catalog, the read models' readers, the rate limits — kept in one `ApiState` on `app.state.api`
and handed to a route by the `api_state` dependency (never by a closure over `create_app`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import psycopg
from fastapi import Request

from catalog.form import MergedForm
from catalog.model import Catalog
from infra.settings import Settings

from .api_producer import EventProducer
from .db import Database

if TYPE_CHECKING:  # api_limits depends on the access rules, which depend on this module
    from .api_limits import RateLimits


def default_read_case(conn: psycopg.Connection, case_id: str) -> dict | None:
    """The case view's reader, looked up per request so the app picks the read model up as soon
    as it is installed."""
    try:
        from projectors.case_view import read_case
    except ImportError:
        return None
    return read_case(conn, case_id)


def default_read_worklist() -> Callable | None:
    try:
        from projectors import case_view
    except ImportError:
        return None
    return getattr(case_view, "read_worklist", None)


@dataclass
class ApiState:
    settings: Settings
    database: Database
    producer: EventProducer
    catalog: Catalog
    limits: "RateLimits"
    case_reader: Callable[[psycopg.Connection, str], dict | None] = default_read_case
    worklist_reader: Callable | None = None
    forms: dict[str, MergedForm] = field(default_factory=dict)
    _keys: dict[str, Any] = field(default_factory=dict)

    def merged_form(self, bundle_code: str) -> MergedForm:
        """The bundle's merged form, built once per bundle rather than per request (~0.4 ms
        each): the catalog does not change while the app runs, and a MergedForm is immutable."""
        mf = self.forms.get(bundle_code)
        if mf is None:
            mf = self.forms[bundle_code] = self.catalog.merged_form(bundle_code=bundle_code)
        return mf

    def master_keys(self):
        """The master key that wraps the data keys (infra/keystore.py), read once."""
        if "master" not in self._keys:
            from infra import keystore

            self._keys["master"] = keystore.MasterKeys.from_env()
        return self._keys["master"]

    def platform_keys(self):
        """Opens sealed values (events/personal.py) with the API's own connections."""
        if "lookup" not in self._keys:
            from infra import keystore

            self._keys["lookup"] = keystore.platform_keys(self.database.connection, self.master_keys())
        return self._keys["lookup"]

    def read_worklist(self) -> Callable | None:
        return self.worklist_reader or default_read_worklist()


def api_state(request: Request) -> ApiState:
    """The intake app's shared state (a FastAPI dependency)."""
    return request.app.state.api


def today() -> date:
    """The deadline clock's day (ONETHING_TODAY pins it), which the status page and queues use."""
    from projectors.deadlines import today_in_china

    return today_in_china()


def label(lbl: Any) -> dict[str, str]:
    return {"zh": lbl.zh, "en": lbl.en}
