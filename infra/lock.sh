#!/usr/bin/env bash
# Re-resolve requirements.lock from pyproject.toml: the runtime dependencies, the test extra and the
# build backend, each pinned with the sha256 of every file pip may install (infra/onething.sh installs
# with --require-hashes). Pins already in the lock are kept unless a range in pyproject.toml rules them
# out, so adding a dependency moves nothing else; `infra/lock.sh --upgrade` or
# `--upgrade-package NAME` moves them on purpose. pip-tools runs from a throwaway venv: the project's
# .venv gets nothing it does not need.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"$PY" -m venv "$tools"
"$tools/bin/pip" install -q "pip-tools==7.6.2"
CUSTOM_COMPILE_COMMAND="infra/lock.sh" "$tools/bin/pip-compile" -q --extra test --generate-hashes \
  --allow-unsafe --strip-extras --build-deps-for editable --no-emit-find-links -o requirements.lock "$@" pyproject.toml
