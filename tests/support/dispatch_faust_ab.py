"""A/B of dispatch on faust-streaming (the last commit before the runtime, a476235) and on the
runtime, on the test stack's broker and database, 2,000 applications each: the figure the README
gives for leaving faust.

    git worktree add /tmp/oldtree a476235
    sed -i 's/^GROUP = "dispatch"$/GROUP = "dispatch-faust-bench"/' /tmp/oldtree/projectors/dispatch.py
    .venv/bin/python -m tests.support.dispatch_faust_ab faust 2000
    .venv/bin/python -m tests.support.dispatch_faust_ab runtime 2000
    git worktree remove --force /tmp/oldtree
"""
import os, sys, time, subprocess, uuid
os.environ.setdefault("ONETHING_KAFKA_PORT", "19092"); os.environ.setdefault("ONETHING_DB_NAME", "onething_test")
os.environ.setdefault("ONETHING_HOME", "/work/main/.onething/test")
import psycopg
from events import bus, kafka_auth
from infra.settings import Settings
from infra.samples import submission
s = Settings.from_env()
which = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
run = uuid.uuid4().hex[:6]
cases = [submission(f"case-ab{which}-{run}-{i:05d}") for i in range(n)]
ids = [c.key for c in cases]
# start the processor at the end of the log (offsets of its own group)
if which == "faust":
    from kafka import KafkaConsumer, OffsetAndMetadata
    from infra.fast_forward import end_offsets
    from catalog.loader import load_catalog
    from infra.topics import APPLICATIONS, decisions_topic
    ends = end_offsets(s.bootstrap_servers, [APPLICATIONS, *(decisions_topic(d) for d in load_catalog().departments)])
    c = KafkaConsumer(**kafka_auth.connection(s.bootstrap_servers), group_id="dispatch-faust-bench", enable_auto_commit=False)
    c.assign(list(ends)); c.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in ends.items()}); c.close()
    cmd = [sys.executable, "-m", "infra.process", "dispatch"]; cwd = "/tmp/oldtree"
    env = {**os.environ, "ONETHING_METRICS_PORT": "-1", "PYTHONPATH": "/tmp/oldtree"}
else:
    from infra.fast_forward import end_offsets, store_offsets
    from catalog.loader import load_catalog
    from infra.topics import APPLICATIONS, decisions_topic
    ends = end_offsets(s.bootstrap_servers, [APPLICATIONS, *(decisions_topic(d) for d in load_catalog().departments)])
    with psycopg.connect(s.database_url) as conn: store_offsets(conn, "dispatch", ends)
    cmd = [sys.executable, "-m", "infra.process", "dispatch"]; cwd = "/work/main"
    env = {**os.environ, "ONETHING_METRICS_PORT": "-1"}
proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=open(f"/tmp/prof/ab-{which}.log", "w"), stderr=subprocess.STDOUT)
time.sleep(12)  # joined its group
p = bus.make_producer(s.bootstrap_servers); bus.publish_all(p, [("applications", c) for c in cases], timeout=120); p.close()
t0 = time.monotonic()
cpu0 = None
with psycopg.connect(s.database_url, autocommit=True) as conn:
    while True:
        done = conn.execute("SELECT count(*) FROM dispatch_cases WHERE case_id = ANY(%s)", (ids,)).fetchone()[0]
        if done >= n or time.monotonic() - t0 > 600: break
        time.sleep(0.2)
dt = time.monotonic() - t0
f = open(f"/proc/{proc.pid}/stat").read().rsplit(")",1)[1].split(); cpu = (int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK")
proc.terminate(); proc.wait(30)
print(f"{which}: {done} of {n} applications dispatched in {dt:.1f} s = {done/dt:.0f}/s; process CPU {cpu:.1f} s (incl. start-up)")
