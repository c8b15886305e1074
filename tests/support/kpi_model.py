"""A KPI model of a test's own (tests/test_kpis.py, tests/test_kpi_api.py): `Model`, built by applying
events directly in a PostgreSQL schema of its own under a projection name of its own, and the
`model` fixture.
"""
from __future__ import annotations

import uuid
from datetime import date

import psycopg
import pytest
from psycopg import sql

from events.envelope import Event
from projectors import kpis as K

from .kpi_scenarios import CAT

RUN = uuid.uuid4().hex[:8]


class Model:
    """A KPI model in a schema of its own, built by applying events directly."""

    def __init__(self, database_url: str, label: str):
        self.schema = f"kpi_test_{RUN}_{label}"
        self.conn = psycopg.connect(database_url, autocommit=True)
        K.create_schema(self.conn, self.schema)
        self.projection = K.KpiProjection(f"kpis_test_{RUN}_{label}", schema=self.schema, catalog=CAT)

    def build(self, events: list[Event]) -> None:
        with self.conn.transaction():
            self.projection.reset(self.conn)
            for e in events:
                self.projection.apply(self.conn, e)

    def build_batches(self, events: list[Event], cuts: list[int]) -> None:
        """As the runtime applies them: one apply_batch per checkpoint, cut at `cuts`."""
        bounds = [0, *cuts, len(events)]
        with self.conn.transaction():
            self.projection.reset(self.conn)
            for lo, hi in zip(bounds, bounds[1:]):
                self.projection.apply_batch(self.conn, events[lo:hi])

    def kpis(self, **kw) -> dict:
        return K.read_kpis(self.conn, schema=self.schema, catalog=CAT, today=kw.pop("today", date(2026, 7, 1)), **kw)

    def snapshot(self) -> dict:
        out = {}
        for table in K.TABLES:
            rows = self.conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(self.schema, table))).fetchall()
            out[table] = sorted(rows, key=repr)
        return out

    def close(self) -> None:
        K.drop_schema(self.conn, self.schema)
        self.conn.close()


@pytest.fixture
def model(database_url):
    m = Model(database_url, uuid.uuid4().hex[:6])
    yield m
    m.close()
