"""The API under test logs in as `onething_api`, as `onething run api` does (infra/process.py):
every route a test walks then proves its SQL needs no more than the role's grants
(infra/db_components.py). The demo e-licence holders are seeded first, as the owner."""
from __future__ import annotations

from dataclasses import replace

import psycopg

from infra import db_components, migrations
from infra.settings import Settings
from producers import e_license


def api_settings(settings: Settings, bootstrap: str, database_url: str) -> Settings:
    migrations.migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        e_license.seed_demo_people(conn)
        has_role = db_components.role("api") in db_components.existing(conn)
    url = db_components.component_url(database_url, "api") if has_role else database_url
    return replace(settings, bootstrap_servers=bootstrap, database_url=url)
