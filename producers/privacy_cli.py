"""`onething erase`, `onething retention`, `onething keys rotate|seal-documents`, `onething deadletters show`: the
operator's side of personal data (README, "Personal data"). Each runs as the tables' owner and the
Kafka `admin` principal, like the other operator commands."""
from __future__ import annotations

from contextlib import nullcontext
from datetime import date

import click
import psycopg
from rich.console import Console
from rich.table import Table

from infra.settings import Settings

console = Console()


def _today(given: str | None) -> date:
    from producers.api_state import today

    return date.fromisoformat(given) if given else today()


@click.command("erase", help="Destroy a data subject's keys (crypto-shredding): every sealed copy of their "
                             "personal data then reads 已删除. Refused while a case is open or within its "
                             "bundle's retention period unless --override-retention.")
@click.argument("subject")
@click.option("--reason", required=True, help="why (recorded in the SubjectErased event)")
@click.option("--by", "operator", required=True, help="the operator's staff id (recorded)")
@click.option("--override-retention", is_flag=True, help="erase before the retention period ends (recorded)")
@click.option("--today", "day", default=None, help="the day to judge retention by (ISO date; default today)")
def erase(subject: str, reason: str, operator: str, override_retention: bool, day: str | None) -> None:
    from catalog.loader import load_catalog
    from events import bus
    from events.envelope import Actor

    from .erasure import ErasureRefused
    from .erasure import erase as do_erase

    s = Settings.from_env()
    producer = bus.make_producer(s.bootstrap_servers)
    try:
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            event = do_erase(conn, lambda topic, ev: bus.publish(producer, topic, ev), load_catalog(), subject,
                             actor=Actor(f"operator:{operator}", "system", "system", staff_id=operator),
                             reason=reason, today=_today(day), override=override_retention)
    except ErasureRefused as exc:
        raise click.ClickException(f"erasure refused: {exc}") from None
    finally:
        producer.close()
    p = event.payload
    console.print(f"erased: {len(p['key_ids'])} keys destroyed, {len(p['case_ids'])} cases now read 已删除 "
                  f"(event {event.id} on privacy)")


@click.command("retention", help="The retention sweeper: subjects whose every case is past its retention "
                                 "period, proposed for erasure (nothing is erased).")
@click.option("--today", "day", default=None, help="the day to judge by (ISO date; default today)")
@click.option("--limit", default=1000, show_default=True)
def retention(day: str | None, limit: int) -> None:
    from catalog.loader import load_catalog

    from .erasure import due

    s = Settings.from_env()
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        rows = due(conn, load_catalog(), _today(day), limit=limit)
    table = Table("subject", "kept until")
    for subject, until in rows:
        table.add_row(subject, until.isoformat())
    console.print(table)
    console.print(f"{len(rows)} subjects due for erasure: `onething erase SUBJECT --reason … --by …`")


@click.group("keys", help="The master key that wraps the data keys.")
def keys() -> None:
    pass


@keys.command("rotate", help="Re-wrap every data key under the current ONETHING_MASTER_KEY (the old one in "
                             "ONETHING_MASTER_KEYS_OLD as ID=BASE64 until this has run); the log is not touched.")
def keys_rotate() -> None:
    from infra import keystore

    s = Settings.from_env()
    master = keystore.MasterKeys.from_env()
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        with console.status("re-wrapping data keys…"):
            n = keystore.rotate(conn, master)
    console.print(f"{n} data keys re-wrapped under master key {master.current_id}")


@keys.command("seal-documents", help="Seal the uploaded documents stored in clear before bodies were sealed "
                                     "(migration 0019), each under its uploader's data key; safe to run again.")
def keys_seal_documents() -> None:
    from rich.progress import Progress

    from events import personal
    from infra import keystore

    s = Settings.from_env()
    master = keystore.MasterKeys.from_env()
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        refs = [r for (r,) in conn.execute("SELECT ref FROM intake_documents WHERE key_id IS NULL ORDER BY ref")]
        with Progress(console=console) as progress:
            task = progress.add_task("sealing documents…", total=len(refs))
            for ref in refs:
                with conn.transaction():
                    row = conn.execute("SELECT owner_token, body FROM intake_documents WHERE ref = %s "
                                       "AND key_id IS NULL FOR UPDATE", (ref,)).fetchone()
                    if row is not None:
                        key_id, key = keystore.subject_key(conn, row[0], master)
                        conn.execute("UPDATE intake_documents SET body = %s, key_id = %s WHERE ref = %s",
                                     (personal.seal_bytes(key, key_id, ref, bytes(row[1])), key_id, ref))
                progress.advance(task)
    console.print(f"{len(refs)} documents sealed")


@click.group("deadletters", help="Messages a consumer could not process (kept 365 days, sealed to the operator).")
def deadletters() -> None:
    pass


@deadletters.command("show", help="Open the latest dead letters with the operator's key (ONETHING_OPERATOR_KEY); "
                                  "--fields also opens the personal fields of each original event. The read is "
                                  "recorded on audit.reads.")
@click.option("--by", "operator", required=True, help="the operator's staff id (recorded)")
@click.option("--reason", required=True, help="why the operator reads them (recorded)")
@click.option("--limit", default=20, show_default=True)
@click.option("--fields", "with_fields", is_flag=True, help="open the original events' personal fields too")
def deadletters_show(operator: str, reason: str, limit: int, with_fields: bool) -> None:
    from events import bus, codec, deadletter, personal
    from infra import keystore
    from infra.topics import DEADLETTER

    from .deadletter_reads import latest, record_operator_reads

    s = Settings.from_env()
    letters = latest(s.bootstrap_servers, DEADLETTER, limit)
    opens = None
    if with_fields:
        conn = psycopg.connect(s.database_url, autocommit=True)
        opens = keystore.platform_keys(lambda: nullcontext(conn))  # lent, not closed after each key
    table = Table("origin", "consumer", "reason", "original")
    shown = []
    for letter in letters:
        _key, value = deadletter.opened(letter.payload)
        try:
            original = codec.decode(value) if value else None
        except Exception:
            original = None
        if original is None:
            what = f"{len(value or b'')} bytes, not an event"
        else:
            what = f"{original.type} key={original.key}"
            shown.append(original)
            form = original.payload.get("form") or original.payload.get("fields")
            if opens is not None and isinstance(form, dict):
                what += " " + ", ".join(f"{k}={v}" for k, v in personal.open_fields(opens, form).items())
        table.add_row(f"{letter.payload['origin_topic']}/{letter.payload['origin_partition']}/"
                      f"{letter.payload['origin_offset']}", letter.payload["consumer"], letter.payload["reason"], what)
    producer = bus.make_producer(s.bootstrap_servers)
    try:
        recorded = record_operator_reads(producer, s.database_url, operator, reason, shown, with_fields)
    finally:
        producer.close()
    console.print(table)
    console.print(f"{len(letters)} dead letters shown; {recorded} reads of personal data recorded on audit.reads")

