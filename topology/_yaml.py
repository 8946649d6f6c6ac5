"""YAML loading that remembers where every key and item came from.

Validation messages must read ``file.yaml:LINE: spec.http[0].timeout: ...``, so the
loaded tree keeps line numbers beside the values. Mappings load as ``LineDict`` and
sequences as ``LineList``: ordinary ``dict``/``list`` subclasses (decoders treat them as
plain containers) with a side table of 1-based lines. Composition runs in libyaml's C
parser when present; only node-to-value conversion is Python.

Aliases are expanded with a node budget so that a "billion laughs" document is refused
with an error instead of exhausting memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from ._errors import Diagnostic

try:  # libyaml makes composing ~10x faster; the pure loader behaves the same.
    _BaseLoader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader

class _FastLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """libyaml's composer calls back into Python for every node; these overrides keep
    those callbacks to a dict lookup (the safe schema has no path resolvers)."""

    _implicit = yaml.SafeLoader.yaml_implicit_resolvers
    _STR_TAG = "tag:yaml.org,2002:str"
    _MAP_TAG = "tag:yaml.org,2002:map"
    _SEQ_TAG = "tag:yaml.org,2002:seq"

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode:
            if implicit[0]:
                for tag, regexp in self._implicit.get(value[:1], ()):
                    if regexp.match(value):
                        return tag
            return self._STR_TAG
        return self._MAP_TAG if kind is yaml.MappingNode else self._SEQ_TAG

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass


MAX_NODES_PER_DOCUMENT = 2_000_000
"""Upper bound on values built for one document, alias expansion included."""


class LineDict(dict):
    """A mapping that knows the line of each key and of the mapping itself."""

    __slots__ = ("line", "key_lines", "value_lines")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}
        self.value_lines: dict[Any, int] = {}


class LineList(list):
    """A sequence that knows the line of each item and of itself."""

    __slots__ = ("line", "item_lines")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document of a file."""

    file: str
    index: int
    """0-based position in the file's stream of documents."""
    line: int
    """1-based line where the document starts."""
    data: Any


class _TooLarge(Exception):
    pass


class _Converter:
    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.budget = MAX_NODES_PER_DOCUMENT
        self.duplicates: list[tuple[int, str]] = []

    def convert(self, node: yaml.Node) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _TooLarge()
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # honours YAML merge keys (<<)
            out = LineDict(node.start_mark.line + 1)
            for key_node, value_node in node.value:
                key = self.convert(key_node)
                try:
                    hash(key)
                except TypeError:
                    key = str(key)
                if key in out:
                    self.duplicates.append((key_node.start_mark.line + 1, str(key)))
                out[key] = self.convert(value_node)
                out.key_lines[key] = key_node.start_mark.line + 1
                out.value_lines[key] = value_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            seq = LineList(node.start_mark.line + 1)
            for item in node.value:
                seq.append(self.convert(item))
                seq.item_lines.append(item.start_mark.line + 1)
            return seq
        tag = node.tag
        if tag == _STR:
            return node.value
        construct = _SCALARS.get(tag)
        if construct is not None:
            return construct(self.loader, node)
        return self.loader.construct_object(node, deep=True)


_STR = "tag:yaml.org,2002:str"
_SCALARS = {  # the common implicit scalars, bypassing construct_object's bookkeeping
    "tag:yaml.org,2002:int": yaml.constructor.SafeConstructor.construct_yaml_int,
    "tag:yaml.org,2002:bool": yaml.constructor.SafeConstructor.construct_yaml_bool,
    "tag:yaml.org,2002:null": yaml.constructor.SafeConstructor.construct_yaml_null,
    "tag:yaml.org,2002:float": yaml.constructor.SafeConstructor.construct_yaml_float,
}


def load_documents(text: str, file: str) -> tuple[list[Document], list[Diagnostic]]:
    """Parse every document of ``text``.

    Documents before a syntax error are still returned, so one broken document does not
    hide the findings about the others; the error itself becomes a diagnostic.
    """
    docs: list[Document] = []
    diags: list[Diagnostic] = []
    loader = _FastLoader(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node said there was one
                break
            conv = _Converter(loader)
            try:
                data = conv.convert(node)
            except _TooLarge:
                diags.append(Diagnostic(file, node.start_mark.line + 1, "",
                                        "document too large: more than "
                                        f"{MAX_NODES_PER_DOCUMENT} values after alias expansion"))
                data = None
            except yaml.YAMLError as exc:
                diags.append(_syntax_diag(file, exc))
                data = None
            for line, key in conv.duplicates:
                diags.append(Diagnostic(file, line, "", f"duplicate key {key!r} in one mapping"))
            if data is not None:
                docs.append(Document(file, index, node.start_mark.line + 1, data))
            index += 1
    except yaml.YAMLError as exc:
        diags.append(_syntax_diag(file, exc))
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # PyYAML's scalar constructors raise these for values like a 10**9-digit date.
        diags.append(Diagnostic(file, 0, "", f"YAML value could not be read: {exc}"))
    finally:
        loader.dispose()
    return docs, diags


def _syntax_diag(file: str, exc: yaml.YAMLError) -> Diagnostic:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else 0
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    what = f"{context}: {problem}" if context else str(problem)
    return Diagnostic(file, line, "", f"invalid YAML: {what}")
