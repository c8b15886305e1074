"""Every processor starts at the log's current end (infra/fast_forward.py), where the tests import it."""
from infra.fast_forward import end_offsets, skip_history  # noqa: F401
