"""Loading files and directories of mesh YAML into typed resources.

Every document is decoded independently: a bad document yields diagnostics and is left
out, the others still load. ``Skipped`` records kinds meshfed does not use, so the CLI
can say so without calling them errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ._decode import INVALID, Decoder, describe
from ._errors import Diagnostic, Severity
from ._resource import KINDS, ObjectMeta, Resource
from ._yaml import Document, LineDict, load_documents

YAML_SUFFIXES = (".yaml", ".yml")
_ENVELOPE = {"apiVersion", "kind", "metadata", "spec", "status"}


@dataclass(frozen=True, slots=True)
class Skipped:
    file: str
    line: int
    api_version: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: skipped {self.kind} {self.name or '(unnamed)'} ({self.api_version}): not a kind meshfed uses"


@dataclass(slots=True)
class LoadResult:
    """Everything a load produced; ``resources`` holds only documents without errors."""

    resources: list[Resource] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.WARNING]

    def extend(self, other: "LoadResult") -> None:
        self.resources.extend(other.resources)
        self.diagnostics.extend(other.diagnostics)
        self.skipped.extend(other.skipped)
        self.files.extend(other.files)

    def of_kind(self, kind: str) -> list[Resource]:
        return [r for r in self.resources if r.kind == kind]


def iter_yaml_files(path: str | os.PathLike[str]) -> list[str]:
    """YAML files under ``path`` in a stable order; hidden folders (``.meshfed``) are skipped."""
    p = Path(path)
    if p.is_file():
        return [str(p)]
    out: list[str] = []
    for root, dirs, files in os.walk(p):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(YAML_SUFFIXES) and not name.startswith("."):
                out.append(os.path.join(root, name))
    return out


def load_paths(paths: Iterable[str | os.PathLike[str]]) -> LoadResult:
    result = LoadResult()
    for path in paths:
        p = Path(path)
        if not p.exists():
            result.diagnostics.append(Diagnostic(str(path), 0, "", "no such file or directory"))
            continue
        for file in iter_yaml_files(p):
            result.extend(load_file(file))
    return result


def load_file(file: str) -> LoadResult:
    try:
        with open(file, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        return LoadResult(diagnostics=[Diagnostic(file, 0, "", f"cannot read file: {exc}")], files=[file])
    result = load_text(text, file)
    result.files.append(file)
    return result


def load_text(text: str, file: str = "<string>") -> LoadResult:
    docs, diags = load_documents(text, file)
    result = LoadResult(diagnostics=list(diags))
    for doc in docs:
        _load_document(doc, result)
    return result


def _load_document(doc: Document, result: LoadResult) -> None:
    data = doc.data
    if data is None:
        return  # an empty document (`---` at the end of a file) is allowed
    if not isinstance(data, dict):
        result.diagnostics.append(Diagnostic(doc.file, doc.line, "",
                                             f"a resource must be a mapping with apiVersion and kind; found {describe(data)}"))
        return
    api_version, kind = data.get("apiVersion"), data.get("kind")
    name = _name_of(data)
    dec = Decoder(doc.file, kind=kind if isinstance(kind, str) else "", name=name)
    dec.lines[""] = doc.line
    if isinstance(data, LineDict):
        for k in data:
            dec.lines[str(k)] = data.key_lines.get(k, doc.line)
    if not isinstance(api_version, str) or not api_version:
        dec.error("apiVersion", f"missing or not a string; found {describe(api_version)}")
    if not isinstance(kind, str) or not kind:
        dec.error("kind", f"missing or not a string; found {describe(kind)}")
    if dec.has_errors:
        result.diagnostics.extend(dec.diagnostics)
        return
    assert isinstance(api_version, str) and isinstance(kind, str)
    group, _, version = api_version.rpartition("/")
    if kind == "List" and api_version == "v1":
        items = data.get("items")
        if isinstance(items, list):
            lines = getattr(items, "item_lines", [doc.line] * len(items))
            for item, line in zip(items, lines):
                _load_document(Document(doc.file, doc.index, line, item), result)
        return
    info = KINDS.get((group, kind))
    if info is None:
        result.skipped.append(Skipped(doc.file, doc.line, api_version, kind, name))
        return
    if version not in info.versions:
        served = ", ".join(sorted(info.versions, reverse=True))
        dec.error("apiVersion", f"{kind} is not served at {api_version!r}; use {group}/ with one of {served}")
    allowed = set(_ENVELOPE)
    if info.body is not None:
        from ._decode import _specs  # the body's keys are top-level fields
        allowed |= set(_specs(info.body)[0])
    for key in data:
        if key not in allowed:
            line = data.key_lines.get(key) if isinstance(data, LineDict) else None
            dec.error(str(key), f"unknown field {str(key)!r} at the top level of a {kind}", line=line)
    meta = dec.decode(ObjectMeta, data.get("metadata"), "metadata") if "metadata" in data else INVALID
    if "metadata" not in data:
        dec.error("metadata", "missing required field 'metadata' (with at least a name)")
    spec: Any = None
    if info.spec is not None:
        raw = data.get("spec")
        if raw is None:
            if info.spec_required:
                dec.error("spec", "missing required field 'spec'")
            spec = dec.decode(info.spec, LineDict(doc.line), "spec")
        else:
            spec = dec.decode(info.spec, raw, "spec")
    body: Any = None
    if info.body is not None:
        extras = LineDict(doc.line)
        if isinstance(data, LineDict):
            for k, v in data.items():
                if k not in _ENVELOPE and k in allowed:  # unknown keys were reported above
                    extras[k] = v
                    extras.key_lines[k] = data.key_lines[k]
                    extras.value_lines[k] = data.value_lines[k]
        body = dec.decode(info.body, extras, "")
    result.diagnostics.extend(dec.diagnostics)
    if dec.has_errors or meta is INVALID or spec is INVALID or body is INVALID:
        return
    result.resources.append(Resource(api_version, kind, meta, spec, doc.file, doc.line, body, dec.lines))


def _name_of(data: dict[str, Any]) -> str:
    meta = data.get("metadata")
    if isinstance(meta, dict):
        name = meta.get("name")
        if isinstance(name, str):
            return name
    return ""
