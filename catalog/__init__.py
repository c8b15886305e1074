"""一件事 bundle catalog: bundles, services, merged forms, dependencies, reform figures.

Pure domain logic over plain data (no broker, no database). The entry points other parts
of onething use:

    from catalog import load_catalog
    cat = load_catalog()                       # the shipped catalog, validated, cached
    cat.merged_form("newborn")                 # 一表申报
    cat.department_subset("police", "newborn") # what the police may receive
    cat.dispatch_waves("newborn")              # 并联审批 order
    from catalog.form import validate_form     # FieldError list, all at once
    from catalog.validators import check_resident_id, check_uscc, check_mobile, mask_resident_id
    from catalog.working_days import add_working_days, working_days_between, is_working_day
"""
from .loader import CatalogError, load_catalog
from .model import Bundle, Catalog, Department, Field, Material, Service

__all__ = ["load_catalog", "CatalogError", "Catalog", "Bundle", "Service", "Department", "Field", "Material"]
