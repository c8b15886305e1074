"""Shared fixtures for the catalog tests: the shipped catalog and small catalogs on disk."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from catalog import load_catalog



# A small valid catalog: two departments, three services in a chain a → b, plus c in parallel.
SMALL = {
    "data/departments.yaml": """
        health: {zh: 卫健, en: Health, adapter: {processing_s: 0.05}}
        police: {zh: 公安, en: Police, adapter: {}}
    """,
    "data/fields.yaml": """
        mother_name: {type: string, zh: 母亲姓名, en: Mother's name, pii: true}
        married: {type: boolean, zh: 已婚, en: Married}
        cert_no: {type: string, zh: 证明编号, en: Certificate number}
        child_id: {type: resident_id, zh: 儿童身份号码, en: Child's ID, pii: true}
    """,
    "data/materials.yaml": """
        id_card: {zh: 身份证, en: ID card, e_license: true, issuer: police}
        invoice: {zh: 发票, en: Invoice}
    """,
    "data/services.yaml": """
        health.cert:
          department: health
          zh: 证明
          en: Certificate
          fields: [mother_name, married]
          materials: [id_card, {material: invoice, when: {field: married, equals: true}}]
          produces: [cert_no]
          statutory: {days: 5, source: "test"}
        police.register:
          department: police
          zh: 登记
          en: Registration
          fields: [mother_name]
          materials: [id_card, invoice]
          consumes: [cert_no]
          produces: [child_id]
          statutory: {days: 10, estimate: true, note: "test"}
        health.guidance:
          department: health
          zh: 指导
          en: Guidance
          fields: [mother_name]
          statutory: {days: 1, source: "test"}
    """,
    "bundles/birth.yaml": """
        code: birth
        zh: 出生
        en: Birth
        kind: individual
        list: {batch: 2024-1, document: test, confidence: confirmed}
        lead: {department: health, source: test}
        services:
          - {service: health.cert, promised: {days: 1, source: test}}
          - {service: police.register, promised: {days: 2, source: test}}
          - {service: health.guidance, promised: {days: 2, source: test}}
        claims:
          - {place: 某地, source: test, materials: {before: 4, after: 1}}
    """,
}


@pytest.fixture(scope="session")
def shipped():
    return load_catalog()


@pytest.fixture
def write_catalog(tmp_path):
    """Write SMALL with some files replaced (text is dedented) and return the directory."""

    def write(**overrides: str) -> Path:
        files = dict(SMALL)
        for key, text in overrides.items():
            files[key.replace("__", "/").replace("_yaml", ".yaml")] = text
        for rel, text in files.items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return tmp_path

    return write


def line_of(path: Path, needle: str) -> int:
    """1-based line of the first line containing `needle`: where an error must point."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


@pytest.fixture
def find_line():
    return line_of
