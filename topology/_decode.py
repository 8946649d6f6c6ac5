"""Typed decoding of loaded YAML into frozen dataclasses, collecting every error.

Theory of operation: a resource type is a tree of ``@dataclass(frozen=True, slots=True)``
classes whose type hints say what each YAML key holds. ``Decoder.decode(cls, value,
path)`` walks the YAML value and the type together. The YAML key of a field is its
camelCase name (``max_ejection_percent`` -> ``maxEjectionPercent``, a trailing ``_`` is
dropped so ``from_`` reads ``from``) unless ``field(metadata={"key": ...})`` says
otherwise. Unknown keys and wrong types are errors naming the field path and the line;
a field with an error falls back to its default so decoding continues and one run
reports everything.

After a dataclass is built its optional ``_check(self, c: Check)`` runs the range and
cross-field rules of that object in one place; ``Check`` reports paths relative to the
object and finds their lines in the table the decoder filled while walking.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from typing import Any, Callable, Mapping

from ._duration import Duration, DurationSyntaxError
from ._errors import Diagnostic, Severity
from ._yaml import LineDict, LineList


def nearest_line(lines: Mapping[str, int], path: str, default: int) -> int:
    """Line of ``path`` or of its nearest ancestor that has one (``a.b[2].c`` -> ``a.b[2]`` -> ...)."""
    p = path
    while p:
        line = lines.get(p)
        if line:
            return line
        cut = max(p.rfind("."), p.rfind("["))
        p = p[:cut] if cut > 0 else ""
    return default


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()
"""Returned by ``decode`` where the value could not be turned into the type."""


def yaml_key(name: str) -> str:
    name = name.rstrip("_")
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def opt(default: Any = None, *, key: str | None = None, required: bool = False,
        factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with YAML metadata (key override, required)."""
    md = {"key": key, "required": required}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    key: str
    type: Any
    required: bool


_SPECS: dict[type, tuple[dict[str, _FieldSpec], tuple[str, ...]]] = {}


def _specs(cls: type) -> tuple[dict[str, _FieldSpec], tuple[str, ...]]:
    cached = _SPECS.get(cls)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    table: dict[str, _FieldSpec] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f.metadata.get("key") or yaml_key(f.name)
        table[key] = _FieldSpec(f.name, key, hints[f.name], bool(f.metadata.get("required")))
    result = (table, tuple(table))
    _SPECS[cls] = result
    return result


def describe(value: Any) -> str:
    """How a found value is quoted in messages: its YAML type and a short excerpt."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value:g}"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return f"string {text!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _type_name(tp: Any) -> str:
    if tp is str:
        return "a string"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "a boolean (true or false)"
    if tp is Duration:
        return "a duration such as '5s'"
    origin = typing.get_origin(tp)
    if origin is list or origin is tuple:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(m.value for m in tp)
    return str(tp)


class Decoder:
    """Decodes one document and collects its diagnostics."""

    def __init__(self, file: str, *, kind: str = "", name: str = "") -> None:
        self.file = file
        self.kind = kind
        self.name = name
        self.diagnostics: list[Diagnostic] = []
        self.lines: dict[str, int] = {}

    # -- reporting -----------------------------------------------------------------
    def line_of(self, path: str) -> int:
        return nearest_line(self.lines, path, self.lines.get("", 0))

    def report(self, path: str, message: str, severity: Severity = Severity.ERROR,
               line: int | None = None) -> None:
        self.diagnostics.append(Diagnostic(
            self.file, self.line_of(path) if line is None else line, path, message,
            severity, self.kind, self.name))

    def error(self, path: str, message: str, line: int | None = None) -> None:
        self.report(path, message, Severity.ERROR, line)

    def warning(self, path: str, message: str, line: int | None = None) -> None:
        self.report(path, message, Severity.WARNING, line)

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.diagnostics)

    # -- decoding ------------------------------------------------------------------
    def decode(self, tp: Any, value: Any, path: str) -> Any:
        shape = _SHAPES.get(tp)
        if shape is None:
            shape = _SHAPES[tp] = _shape_of(tp)
        # Fast paths for the common leaves: a schema walk visits these most.
        if shape is _S_STR:
            if type(value) is str:
                return value
        elif shape is _S_DATACLASS:
            return self._decode_dataclass(tp, value, path)
        elif shape is _S_INT:
            if type(value) is int:
                return value
        elif shape is _S_OPTIONAL:
            if value is None:
                return None
            return self.decode(_ARGS[tp][0], value, path)
        elif shape is _S_BOOL:
            if type(value) is bool:
                return value
        return self._decode_slow(tp, value, path)

    def _decode_slow(self, tp: Any, value: Any, path: str) -> Any:
        origin = typing.get_origin(tp)
        if origin is typing.Union or origin is types.UnionType:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if value is None:
                return None
            if len(args) == 1:
                return self.decode(args[0], value, path)
            for a in args:  # e.g. int | str (Kubernetes IntOrString)
                if _plain_match(a, value):
                    return self.decode(a, value, path)
            self.error(path, f"expected {' or '.join(_type_name(a) for a in args)}, found {describe(value)}")
            return INVALID
        if tp is Any:
            return _plain(value)
        if origin is list or origin is tuple:
            item_tp = typing.get_args(tp)[0]
            if not isinstance(value, list):
                self.error(path, f"expected a list, found {describe(value)}")
                return INVALID
            lines = value.item_lines if isinstance(value, LineList) else None
            out = []
            for i, item in enumerate(value):
                p = f"{path}[{i}]"
                if lines is not None:
                    self.lines[p] = lines[i]
                v = self.decode(item_tp, item, p)
                if v is not INVALID:
                    out.append(v)
            return tuple(out)
        if origin is dict:
            key_tp, val_tp = typing.get_args(tp)
            if not isinstance(value, dict):
                self.error(path, f"expected a mapping, found {describe(value)}")
                return INVALID
            out_d: dict[Any, Any] = {}
            for k, v in value.items():
                p = f"{path}.{k}" if path else str(k)
                if isinstance(value, LineDict):
                    self.lines[p] = value.key_lines.get(k, value.line)
                if key_tp is str and not isinstance(k, str):
                    self.error(p, f"keys must be strings, found {describe(k)}")
                    continue
                dv = self.decode(val_tp, v, p)
                if dv is not INVALID:
                    out_d[k] = dv
            return out_d
        if tp is Duration:
            if not isinstance(value, str):
                self.error(path, f"expected a duration such as '5s', found {describe(value)}")
                return INVALID
            try:
                return Duration.parse(value)
            except DurationSyntaxError as exc:
                self.error(path, f"invalid duration {value!r}: {exc}")
                return INVALID
        if dataclasses.is_dataclass(tp):
            return self._decode_dataclass(tp, value, path)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            if isinstance(value, str):
                try:
                    return tp(value)
                except ValueError:
                    pass
            allowed = ", ".join(m.value for m in tp)
            self.error(path, f"must be one of {allowed}; found {describe(value)}")
            return INVALID
        if tp is bool:
            if isinstance(value, bool):
                return value
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif tp is str:
            if isinstance(value, str):
                return value
        else:  # pragma: no cover - a schema bug, not a user error
            raise TypeError(f"unsupported schema type {tp!r} at {path}")
        self.error(path, f"expected {_type_name(tp)}, found {describe(value)}")
        return INVALID

    def _decode_dataclass(self, cls: type, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, found {describe(value)}")
            return INVALID
        table, keys = _specs(cls)
        kwargs: dict[str, Any] = {}
        ok = True
        for key, raw in value.items():
            p = f"{path}.{key}" if path else str(key)
            if isinstance(value, LineDict):
                self.lines[p] = value.key_lines.get(key, value.line)
            spec = table.get(key) if isinstance(key, str) else None
            if spec is None:
                hint = difflib.get_close_matches(str(key), keys, n=1)
                more = f" (did you mean {hint[0]!r}?)" if hint else ""
                line = value.key_lines.get(key) if isinstance(value, LineDict) else None
                self.error(p, f"unknown field {str(key)!r}{more}", line=line)
                ok = False
                continue
            if raw is None and not spec.required:
                continue  # YAML `field:` with no value means unset, as in protobuf JSON
            v = self.decode(spec.type, raw, p)
            if v is INVALID:
                ok = False
                continue
            kwargs[spec.name] = v
        for key, spec in table.items():
            if spec.required and spec.name not in kwargs and (key not in value or value[key] is None):
                self.error(path, f"missing required field {key!r}")
                ok = False
        try:
            obj = cls(**kwargs)
        except TypeError:  # a required field without default that is missing
            return INVALID
        check = getattr(obj, "_check", None)
        if check is not None and ok:
            check(Check(self, path))
        return obj


_S_STR, _S_INT, _S_BOOL, _S_DATACLASS, _S_OPTIONAL, _S_OTHER = (object() for _ in range(6))
_SHAPES: dict[Any, object] = {}
_ARGS: dict[Any, tuple[Any, ...]] = {}


def _shape_of(tp: Any) -> object:
    """Classify a schema type once, so ``decode`` dispatches with one dict lookup."""
    if tp is str:
        return _S_STR
    if tp is int:
        return _S_INT
    if tp is bool:
        return _S_BOOL
    if tp is not Duration and dataclasses.is_dataclass(tp):
        return _S_DATACLASS
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = tuple(a for a in typing.get_args(tp) if a is not type(None))
        if len(args) == 1:
            _ARGS[tp] = args
            return _S_OPTIONAL
    return _S_OTHER


class Check:
    """What ``_check`` hooks use to report, with paths relative to their object."""

    __slots__ = ("decoder", "base")

    def __init__(self, decoder: Decoder, base: str) -> None:
        self.decoder = decoder
        self.base = base

    def path(self, rel: str) -> str:
        if not rel:
            return self.base
        if rel.startswith("["):
            return self.base + rel
        return f"{self.base}.{rel}" if self.base else rel

    def error(self, rel: str, message: str) -> None:
        self.decoder.error(self.path(rel), message)

    def warning(self, rel: str, message: str) -> None:
        self.decoder.warning(self.path(rel), message)

    def at(self, rel: str) -> "Check":
        return Check(self.decoder, self.path(rel))


def _plain_match(tp: Any, value: Any) -> bool:
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool:
        return isinstance(value, bool)
    if tp is Duration:
        return isinstance(value, str)
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
        return isinstance(value, dict)
    if typing.get_origin(tp) in (list, tuple):
        return isinstance(value, list)
    return True


def _plain(value: Any) -> Any:
    """Strip line bookkeeping from a free-form value (kept for dumps and passthrough)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
