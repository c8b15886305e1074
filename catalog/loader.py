"""YAML → catalog model, with every problem reported as `file:line: what is wrong`.

The catalog is edited by people (policy staff adding a local bundle), so a mistake must be
found when the catalog loads, not when the first citizen applies, and the message must
point at the line to fix. All problems of a load are collected and raised together.

Layout of a catalog directory (the package's own is the default):

    data/departments.yaml   code → {zh, en, adapter}                 (services_loader.py)
    data/fields.yaml        id → {type, zh, en, pii, validator, options, …}
    data/materials.yaml     id → {zh, en, e_license, issuer, note}
    data/services.yaml      id → {department, zh, en, fields, materials, consumes, produces, statutory, …}
    data/claims.yaml        optional: programme-wide claims (several bundles at once)
    bundles/<code>.yaml     one bundle per file (see bundles/newborn.yaml; bundle_loader.py)

The line-aware YAML reader is marked_yaml.py; this module puts the pieces together.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .bundle_loader import BATCHES, CONFIDENCE, _bundle, _claims  # noqa: F401 (re-exported)
from .marked_yaml import (CatalogError, Problem, _display, _DuplicateKey, _File, _Map,  # noqa: F401 (re-exported)
                          _MarkedLoader, _Seq, read_yaml)
from .model import Bundle, Catalog, Claim
from .services_loader import (FORMAT_NAMES, FORMAT_TOKEN, _check_services, _departments,  # noqa: F401
                              _fields, _materials, _services)

__all__ = ["CatalogError", "Problem", "load_catalog", "read_yaml", "DEFAULT_ROOT"]

DEFAULT_ROOT = Path(__file__).resolve().parent


# --- the whole catalog ---------------------------------------------------------------------

def _load(root: Path) -> Catalog:
    problems: list[Problem] = []
    data = root / "data"
    bundle_dir = root / "bundles"
    if not bundle_dir.is_dir():
        problems.append(Problem(_display(bundle_dir), 0, "no bundles directory"))
    paths = {name: data / f"{name}.yaml" for name in ("departments", "fields", "materials", "services")}
    if (data / "claims.yaml").exists():
        paths["claims"] = data / "claims.yaml"
    bundle_paths = sorted(bundle_dir.glob("*.yaml")) if bundle_dir.is_dir() else []
    # Syntax first: a file that does not parse would make every reference into it look
    # unknown, burying the one real mistake under consequences.
    docs = {key: read_yaml(path, problems) for key, path in [*paths.items(), *((p, p) for p in bundle_paths)]}
    if problems:
        raise CatalogError(problems)
    files = {key: _File(path, problems) for key, path in [*paths.items(), *((p, p) for p in bundle_paths)]}

    departments = _departments(files["departments"], docs["departments"])
    fields = _fields(files["fields"], docs["fields"])
    materials = _materials(files["materials"], docs["materials"], departments)
    for mid, mat in materials.items():
        if mid in fields:
            files["materials"].problem(mat.origin.line, f"material {mid!r} has the same id as a field; outputs "
                                                        "are named by id, so ids must be unique across fields and materials")
    services, service_lines = _services(files["services"], docs["services"], departments)
    producers = _check_services(files["services"], services, service_lines, fields, materials)
    bundles: dict[str, Bundle] = {}
    for path in bundle_paths:
        bundle = _bundle(files[path], docs[path], departments, services, materials, producers, fields)
        if bundle is None:
            continue
        if bundle.code in bundles:
            files[path].problem(1, f"bundle code {bundle.code!r} is already used by {bundles[bundle.code].origin}")
            continue
        bundles[bundle.code] = bundle
    claims = _programme_claims(files["claims"], docs["claims"]) if "claims" in paths else []
    if problems:
        raise CatalogError(problems)
    return Catalog(departments, fields, materials, services, bundles, tuple(claims))


def _programme_claims(f: _File, doc: Any) -> list[Claim]:
    m = f.mapping(doc, 1, "claims file")
    if m is None:
        return []
    f.keys(m, {"claims"}, "claims file")
    return _claims(f, m.get("claims"), m.at("claims"), "programme")


_DEFAULT: Catalog | None = None


def load_catalog(path: str | os.PathLike | None = None) -> Catalog:
    """Load and validate a catalog directory; raises CatalogError listing every problem.

    The package's own catalog (path None) is loaded once per process and cached: it is
    read-only data. Other paths are read afresh each call, so an operator checking an edited
    copy always sees the current files.
    """
    global _DEFAULT
    if path is None:
        if _DEFAULT is None:
            _DEFAULT = _load(DEFAULT_ROOT)
        return _DEFAULT
    return _load(Path(path))
