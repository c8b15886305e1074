"""Reference adapters: simulated department backends behind the adapter SDK.

Every department of the catalog that has an `adapter` configuration (catalog/data/departments.yaml:
all 33 that the bundles and register copies name) gets a `SimulatedBackend` that decides its
tasks and keeps its own register in PostgreSQL (migration 0006; the newborn bundle's services
have tables of their own, every other service the department's rows of the generic register),
written in the SDK's transaction so a task's effect in the register happens exactly once. One
generic class does every department:

- `registers.py`  which register each service writes and how it numbers a record (the
                  per-service table; other services fall back to a generic register)
- `numbers.py`    gapless counters and GB 11643 resident IDs
- `formats.py`    each output's number in its catalog format (`format:` in fields.yaml)
- `automatic.py`  免批秒办: a service marked `auto_decision` decided by rule, what it relied on recorded
- `config.py`     `BackendConfig`: processing time, rejection and correction rules, outages
                  (from a dict or ONETHING_SIM_* environment variables)
- `backend.py`    `SimulatedBackend`: the decision flow
- `run.py`        `run_adapter` (one department) and `run_all` (several, in threads); the
                  backend it builds routes register syncs to `register_copy.py` (the
                  cascade's half) when present, everything else to `SimulatedBackend`
"""
from .backend import SimulatedBackend
from .config import BackendConfig, CorrectionRule, RejectRule

__all__ = ["BackendConfig", "CorrectionRule", "RejectRule", "SimulatedBackend"]
