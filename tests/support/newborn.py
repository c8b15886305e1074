"""The synthetic newborn application (infra/samples.py), where the tests have always imported it."""
from infra.samples import as_event_form, newborn_form, newborn_materials, resident_id, submission  # noqa: F401
