"""`onething faults`: the guarantees tested as Kafka's own system tests test theirs.

One stack of its own — a 3-node KRaft cluster (replication 3, min.insync.replicas 2), a private
PostgreSQL cluster (so restarting it never touches anyone else's database) and every process of
`onething run` — under a steady load that runs throughout: newborn applications posted to the
intake API by clients that retry with their Idempotency-Key, and company register changes written
by the register's own recorder with a change id. Scenarios inject one fault each, heal it, and the
run is verified against the log and the databases at the end (infra/faults/verify.py).

    stack.py      the cluster, the private PostgreSQL, the supervised processes
    load.py       the clients and what each of them was answered
    scenarios.py  the faults: what each injects and how it heals
    verify.py     what must hold afterwards, and the figures per scenario
    run.py        the command: orchestration and the printed table
"""
