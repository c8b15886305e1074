"""YAML that remembers line numbers, and a reader that records problems as `file:line: message`.

Every file of the catalog (and the rules, reasons and search lists next to it) is read through
these, so a mistake is reported where it is, all problems of a load together.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .model import Figure, Label, Origin

__all__ = ["CatalogError", "Problem", "read_yaml"]


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class CatalogError(ValueError):
    """The catalog did not load; `problems` lists every mistake found, each with file and line."""

    def __init__(self, problems: list[Problem]):
        self.problems = tuple(problems)
        super().__init__("\n".join(map(str, self.problems)))


# --- YAML that remembers line numbers ------------------------------------------------------

class _Map(dict):
    """A mapping that knows its own line and each key's line (1-based)."""
    line: int = 0
    key_lines: dict

    def at(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class _Seq(list):
    line: int = 0
    item_lines: list

    def at(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _MarkedLoader(yaml.SafeLoader):
    pass


def _construct_map(loader: _MarkedLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise _DuplicateKey(None, None, f"duplicate key {key!r} (a definition may appear only once)",
                                key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_seq(loader: _MarkedLoader, node: yaml.SequenceNode) -> _Seq:
    result = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_MarkedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_MarkedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def _display(path: Path) -> str:
    """Relative to the working directory when inside it (as editors and CI print paths)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def read_yaml(path: Path, problems: list[Problem]) -> Any:
    """Parse one file with line-aware containers; a syntax error becomes a Problem."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_MarkedLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        problems.append(Problem(_display(path), line, f"{exc.problem or exc.context}"))
    except (OSError, yaml.YAMLError) as exc:
        problems.append(Problem(_display(path), 0, f"cannot read: {exc}"))
    return None


# --- a reader per file ---------------------------------------------------------------------

class _File:
    """Typed access to one parsed file that records problems instead of raising."""

    def __init__(self, path: Path, problems: list[Problem]):
        self.path = path
        self.name = _display(path)
        self.problems = problems

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.name, line, message))

    def origin(self, line: int) -> Origin:
        return Origin(self.name, line)

    def mapping(self, value: Any, line: int, what: str) -> _Map | None:
        if isinstance(value, _Map):
            return value
        self.problem(line, f"{what} must be a mapping")
        return None

    def seq(self, value: Any, line: int, what: str) -> _Seq:
        if value is None:
            return _Seq()
        if isinstance(value, _Seq):
            return value
        self.problem(line, f"{what} must be a list")
        return _Seq()

    def keys(self, m: _Map, allowed: set[str], what: str) -> None:
        for key in m:
            if key not in allowed:
                self.problem(m.at(key), f"{what}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")

    def text(self, m: _Map, key: str, what: str, required: bool = True) -> str | None:
        value = m.get(key)
        if value is None:
            if required:
                self.problem(m.line, f"{what}: missing {key!r}")
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem(m.at(key), f"{what}: {key!r} must be non-empty text")
            return None
        return value

    def flag(self, m: _Map, key: str, what: str, default: bool = False) -> bool:
        value = m.get(key, default)
        if not isinstance(value, bool):
            self.problem(m.at(key), f"{what}: {key!r} must be true or false")
            return default
        return value

    def number(self, m: _Map, key: str, what: str, *, integer: bool = False, default: Any = None,
               minimum: float = 0) -> Any:
        value = m.get(key, default)
        if value is None:
            return None
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or value < minimum:
            kind = "a whole number" if integer else "a number"
            self.problem(m.at(key), f"{what}: {key!r} must be {kind} ≥ {minimum}")
            return default
        return value

    def label(self, m: _Map, what: str) -> Label:
        return Label(self.text(m, "zh", what) or "?", self.text(m, "en", what) or "?")

    def figure(self, value: Any, line: int, what: str, unit_key: str = "days") -> Figure | None:
        """A sourced number: {days: 5, source: …} or {days: 5, estimate: true, note: …}."""
        m = self.mapping(value, line, what)
        if m is None:
            return None
        self.keys(m, {unit_key, "source", "estimate", "note"}, what)
        number = self.number(m, unit_key, what)
        if number is None:
            if unit_key not in m:
                self.problem(m.line, f"{what}: missing {unit_key!r}")
            return None
        source = self.text(m, "source", what, required=False)
        estimate = self.flag(m, "estimate", what)
        note = self.text(m, "note", what, required=False)
        if not source and not (estimate and note):
            self.problem(m.line, f"{what}: a figure needs a 'source', or 'estimate: true' with a 'note' "
                                 "saying how it was chosen")
        return Figure(float(number), source, estimate, note, self.origin(m.line))
