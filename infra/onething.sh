#!/usr/bin/env bash
# All set-up on a fresh machine, idempotent, then one job:
#   infra/onething.sh demo    the local stack plus the demo (the README's first command)
#   infra/onething.sh test    the local stack plus the whole test suite (the README's second; .ci/run)
#   infra/onething.sh test-long  the same at full size, then the 3-node fault scenarios (README, Tests)
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
if [[ "${1:-demo}" = test* ]] && { [ ! -x /usr/bin/chromium ] || ! dpkg -s fonts-noto-cjk >/dev/null 2>&1; }; then
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
  test|test-long)
    job=$1
    shift || true
    # No plugin autoloading: pytest would otherwise rewrite the asserts of every module of every
    # package that ships a plugin (all of hypothesis, schemathesis and anyio: ~300 modules, ~10 s of
    # CPU in each process); the plugins the suite uses are named instead. Each lane ends with its
    # 15 slowest steps, so a CI log shows where the time went, and why any test was skipped.
    export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
    PYTEST=(.venv/bin/python -m pytest -q -p no:cacheprovider -p pytest_timeout -p _hypothesis_pytestplugin
            -p xdist.plugin --durations=15 -rs)
    # tests/conftest.py brings up a stack of the suite's own (broker 19092, database onething_test)
    set +e
    if [ $# -gt 0 ] || [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ] || [ -n "${DATABASE_URL:-}" ]; then
      [ "$job" = test-long ] && export ONETHING_TEST_SCALE=long
      "${PYTEST[@]}" "$@"
      # pytest's 5 means "no test ran": that is a failure of the suite, not a pass
      exit $?
    fi
    .venv/bin/python -c "from infra.kafka_local import ensure_jars; ensure_jars()"   # fetched once, not by each lane
    pg_was_up=$(.venv/bin/python -c "from infra import postgres_local as p; print(int(p.server_online()))")
    mkdir -p .onething
    # Each run starts from nothing, as on CI's clean clone: the brokers from an empty log (a log kept
    # across runs grows with every test's topics, and the broker then needs longer than its start
    # timeout), the databases empty (offsets kept from an earlier log would point past the new one's
    # end). A lane whose broker already runs is left alone, its database too. One lane after the
    # other: two lanes creating the project's role at once would race.
    for lane in test:19092:onething_test test-faults:19192:onething_test_faults; do
      IFS=: read -r dir port db <<< "$lane"
      fresh=False
      if .venv/bin/python -c "import sys; from infra.kafka_local import port_open; sys.exit(port_open('127.0.0.1', $port))"; then   # closed
        rm -rf ".onething/$dir/kafka"
        fresh=True
      fi
      ONETHING_DB_NAME=$db .venv/bin/python -c \
        "from infra import postgres_local as p; from infra.settings import Settings; p.ensure_local(Settings.from_env().database_url, fresh=$fresh)"
    done
    SLOW_LANE=(env ONETHING_HOME="$PWD/.onething/test-faults" ONETHING_KAFKA_PORT=19192
               ONETHING_DB_NAME=onething_test_faults ONETHING_METRICS_BASE_PORT=19600)
    if [ "$job" = test ]; then
      # Two lanes at once, each on a stack of its own: the whole-system scenarios (`-m slow`:
      # every process of `onething run`, processes killed — mostly waiting) beside everything
      # else, which runs in two pytest-xdist workers (whole files each) sharing the other stack.
      # When the xdist lane ends, the short form of `onething faults` (`-m faults`: a 3-node
      # cluster of its own, ports from 30000) takes its place beside the whole-system lane: two
      # stacks at a time (three at once had slowed every lane, 1,767 s on CI on 2026-12-01).
      "${SLOW_LANE[@]}" "${PYTEST[@]}" -m "slow and not faults" > .onething/test-slow.log 2>&1 &
      slow=$!
      "${PYTEST[@]}" -n 2 --dist loadfile -m "not slow and not faults"
      rc=$?
      echo "---- then the 3-node fault scenarios' short form (-m faults; onething faults --short) ----"
      "${PYTEST[@]}" -m faults
      rc_more=$?
      wait "$slow"
      rc_slow=$?
      echo "---- beside them, the whole-system scenarios (-m slow; broker 19192, database onething_test_faults) ----"
      cat .onething/test-slow.log
    else
      # The long forms, one after the other: everything at full size, then the 3-node fault
      # scenarios (`onething faults --short` and a second 3-node stack; tests/test_faults.py)
      export ONETHING_TEST_SCALE=long
      "${PYTEST[@]}" -n 2 --dist loadfile -m "not slow and not faults"
      rc=$?
      "${SLOW_LANE[@]}" "${PYTEST[@]}" -m "slow and not faults"
      rc_slow=$?
      "${PYTEST[@]}" -m faults
      rc_more=$?
    fi
    if [ "$pg_was_up" != 1 ]; then
      .venv/bin/python -c "from infra.settings import Settings; from infra.stack import stop_postgres; stop_postgres(Settings.from_env())"
    fi
    [ "$rc" -ne 0 ] && exit "$rc"
    [ "$rc_slow" -ne 0 ] && exit "$rc_slow"
    exit "$rc_more" ;;
  *)
    exec .venv/bin/onething "$@" ;;
esac
