#!/usr/bin/env bash
# All set-up on a fresh machine, idempotent, then one job:
#   infra/onething.sh demo    the local stack plus the demo (the README's first command)
#   infra/onething.sh test    the local stack plus the whole test suite (the README's second; .ci/run)
#   infra/onething.sh ARGS    any other `onething` command, after set-up
# It installs only what is missing (Java, Maven, Python packages; PostgreSQL and the Kafka jars
# are fetched by `onething up`), and reuses a running broker and database.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

APT_UPDATED=
apt_install() {
  if [ "$(id -u)" != 0 ]; then echo "need root to apt-get install $*" >&2; exit 1; fi
  if [ -z "$APT_UPDATED" ]; then apt-get update -q; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

command -v java >/dev/null || apt_install openjdk-17-jre-headless
command -v mvn  >/dev/null || apt_install maven
# the status-page tests drive Debian's Chromium (never a downloaded browser); CJK fonts to render 中文
if [ "${1:-demo}" = test ] && { [ ! -x /usr/bin/chromium ] || ! dpkg -s fonts-noto-cjk >/dev/null 2>&1; }; then
  apt_install chromium fonts-noto-cjk
fi
# the SRE view: Debian's Prometheus server and promtool (alert rules checked in the tests, `onething prometheus up`)
command -v promtool >/dev/null && command -v prometheus >/dev/null || apt_install prometheus
if [ -z "${DATABASE_URL:-}" ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt_install postgresql
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# exactly the versions the tests passed with: requirements.lock (written by infra/lock.sh) pins every
# package, the test extra's and the build backend's too, each file checked against its sha256; then
# the project itself, resolving nothing again. Done again whenever the lock or pyproject.toml changes.
stamp=.venv/.onething-installed
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q --require-hashes -r requirements.lock
  .venv/bin/pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

# the local stack with its development credentials (infra/safe_config.py); a real deployment
# runs `onething run` under its own environment, not this script
export ONETHING_ENV=${ONETHING_ENV:-dev}
# Bytecode caches on: a machine set up with PYTHONDONTWRITEBYTECODE (this one was) recompiles every
# module in every process the suite starts, and pytest re-rewrites the asserts of every test module
unset PYTHONDONTWRITEBYTECODE

job=${1:-demo}
case "$job" in
  demo)
    shift || true
    exec .venv/bin/onething demo "$@" ;;
  test)
    shift || true
    # No plugin autoloading: pytest would otherwise rewrite the asserts of every module of every
    # package that ships a plugin (all of hypothesis, schemathesis and anyio: ~300 modules, ~10 s of
    # CPU in each lane); the two plugins the suite uses are named instead. Each lane ends with its
    # 15 slowest steps, so a CI log shows where the time went.
    export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
    PYTEST_PLUGINS_ARGS="-p pytest_timeout -p _hypothesis_pytestplugin --durations=15"
    # tests/conftest.py brings up a stack of the suite's own (broker 19092, database onething_test)
    set +e
    if [ $# -gt 0 ] || [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ] || [ -n "${DATABASE_URL:-}" ]; then
      .venv/bin/python -m pytest -q -p no:cacheprovider $PYTEST_PLUGINS_ARGS "$@"
      # pytest's 5 means "no test ran": that is a failure of the suite, not a pass
      exit $?
    fi
    # The whole suite in two lanes at once, each on a stack of its own: the fault scenarios
    # (`-m slow`: processes killed, brokers lost — mostly waiting) beside everything else, so the
    # suite fits its 10 minutes on two cores. PostgreSQL is shared (one database per lane): it is
    # started here, before either lane, and stopped here if this started it.
    .venv/bin/python -c "from infra.kafka_local import ensure_jars; ensure_jars()"   # fetched once, not by both lanes
    pg_was_up=$(.venv/bin/python -c "from infra import postgres_local as p; print(int(p.server_online()))")
    # the server, the project's role, both lanes' databases and the components' roles, one after
    # the other (two lanes creating the same role at once would race)
    ONETHING_DB_NAME=onething_test .venv/bin/python -c \
      "from infra import postgres_local as p; from infra.settings import Settings; p.ensure_local(Settings.from_env().database_url)"
    ONETHING_DB_NAME=onething_test_faults .venv/bin/python -c \
      "from infra import postgres_local as p; from infra.settings import Settings; p.ensure_local(Settings.from_env().database_url)"
    mkdir -p .onething
    # Each run's brokers start from an empty log, as on CI's clean clone: a log kept across runs
    # grows with every test's topics (hundreds of partitions, ~1 GB after a day of runs) and the
    # broker then needs longer than its start timeout. A broker already running is left alone.
    for lane in test:19092 test-faults:19192; do
      if .venv/bin/python -c "import sys; from infra.kafka_local import port_open; sys.exit(port_open('127.0.0.1', ${lane#*:}))"; then   # closed
        rm -rf ".onething/${lane%%:*}/kafka"
      fi
    done
    ONETHING_HOME="$PWD/.onething/test-faults" ONETHING_KAFKA_PORT=19192 ONETHING_DB_NAME=onething_test_faults \
      ONETHING_METRICS_BASE_PORT=19600 .venv/bin/python -m pytest -q -p no:cacheprovider $PYTEST_PLUGINS_ARGS -m "slow and not faults" \
      > .onething/test-faults.log 2>&1 &
    faults=$!
    # `onething faults --short` on a 3-node stack and a PostgreSQL cluster of its own (ports from 30000):
    # mostly waiting for brokers to die and come back, so a lane of its own
    .venv/bin/python -m pytest -q -p no:cacheprovider $PYTEST_PLUGINS_ARGS -m faults > .onething/test-faults-short.log 2>&1 &
    short=$!
    .venv/bin/python -m pytest -q -p no:cacheprovider $PYTEST_PLUGINS_ARGS -m "not slow and not faults"
    rc=$?
    wait "$faults"
    rc_faults=$?
    wait "$short"
    rc_short=$?
    echo "---- beside it, the fault scenarios (-m slow; broker 19192, database onething_test_faults) ----"
    cat .onething/test-faults.log
    echo "---- and \`onething faults --short\` (-m faults; tests/test_faults.py) ----"
    cat .onething/test-faults-short.log
    if [ "$pg_was_up" != 1 ]; then
      .venv/bin/python -c "from infra.settings import Settings; from infra.stack import stop_postgres; stop_postgres(Settings.from_env())"
    fi
    [ "$rc" -ne 0 ] && exit "$rc"
    [ "$rc_faults" -ne 0 ] && exit "$rc_faults"
    exit "$rc_short" ;;
  *)
    exec .venv/bin/onething "$@" ;;
esac
