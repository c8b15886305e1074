"""requirements.lock (infra/lock.sh) is what infra/onething.sh installs, with --require-hashes and the
project itself with --no-deps: a dependency added to pyproject.toml and not to the lock would be
missing on a fresh machine while this one, which has it, passes. So: every requirement of the
project and of its test extra is pinned in the lock to a version inside its range, with a hash."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
FIX = "run infra/lock.sh (README, \"Reproducible installs\")"


def _locked() -> dict[str, tuple[str, list[str]]]:
    """name → (version, hashes) of every pin in the lock."""
    text = (ROOT / "requirements.lock").read_text()
    pins: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", block)
        if head:
            pins[canonicalize_name(head[1])] = (head[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def _required() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["test"],
            *project["build-system"]["requires"]]
    return [Requirement(r) for r in reqs]


def test_the_lock_pins_every_requirement_within_its_range_with_hashes():
    pins = _locked()
    assert len(pins) >= 40, "the lock parsed to almost nothing"
    problems = []
    for req in _required():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req}: not in the lock")
        elif not req.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"{req}: locked at {pins[name][0]}")
    assert not problems, f"{problems}; {FIX}"
    unhashed = [name for name, (_, hashes) in pins.items() if not hashes]
    assert not unhashed, f"pins without a hash: {unhashed}; {FIX}"


def test_the_lock_holds_the_extras_packages_too():
    """--strip-extras writes `uvicorn`, not `uvicorn[standard]`: what the extras bring must be pinned itself."""
    pins = _locked()
    for name in ("crc32c", "psycopg-binary", "httptools", "uvloop", "watchfiles", "websockets"):
        assert name in pins, f"{name} (an extra of a requirement) is not in the lock; {FIX}"
