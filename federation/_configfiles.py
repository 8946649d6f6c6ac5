"""The config source's per-file layer: which YAML files there are, and each one loaded once.

A file is identified by (mtime, size) between polls and by the sha256 of its bytes
across them: a file rewritten with the same bytes keeps its decoded resources (the same
``Resource`` objects, which is what lets the config source reuse its registry). A file
modified within ``RACY_NS`` is re-read at every poll whatever its stamp says: a rewrite
of the same size within one filesystem timestamp tick would look unchanged (git's
"racily clean" index entries). Each document's raw mapping is kept by line, for the
inline resources of proxy documents.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from topology import Diagnostic, LoadResult
from topology._loader import _load_document, iter_yaml_files
from topology._yaml import load_documents

RACY_NS = 2_000_000_000
"""Files modified less than this long ago (nanoseconds) are re-hashed at every poll."""


@dataclass(frozen=True, slots=True)
class FileState:
    mtime_ns: int
    size: int
    digest: str
    result: LoadResult
    raw: dict[int, Any]
    """Document or List item line -> its raw mapping, for the proxies' inline resources."""


def stat_tree(directory: Path) -> dict[str, tuple[int, int]]:
    """Path -> (mtime_ns, size) of every YAML file under ``directory`` (none if it is missing)."""
    stamps = {}
    for path in iter_yaml_files(directory) if directory.is_dir() else ():
        try:
            st = os.stat(path)
        except OSError:
            continue  # removed between the walk and the stat: the next poll sees it gone
        stamps[path] = (st.st_mtime_ns, st.st_size)
    return stamps


def load_file_state(path: str, stamp: tuple[int, int], old: FileState | None, racy: bool) -> FileState:
    """``old`` when the file is unchanged, else the file read (and decoded unless its bytes are old's)."""
    if old is not None and (old.mtime_ns, old.size) == stamp and not racy:
        return old
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return FileState(*stamp, f"unreadable:{exc}", LoadResult(
            diagnostics=[Diagnostic(path, 0, "", f"cannot read file: {exc}")], files=[path]), {})
    digest = hashlib.sha256(data).hexdigest()
    if old is not None and old.digest == digest:
        return old if (old.mtime_ns, old.size) == stamp else FileState(*stamp, digest, old.result, old.raw)
    result, raw = load_file_bytes(path, data)
    return FileState(*stamp, digest, result, raw)


def load_file_bytes(path: str, data: bytes) -> tuple[LoadResult, dict[int, Any]]:
    """Load one file as ``topology.load_file`` does, keeping each document's raw mapping by line."""
    result = LoadResult(files=[path])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        result.diagnostics.append(Diagnostic(path, 0, "", f"cannot read file: {exc}"))
        return result, {}
    docs, diags = load_documents(text, path)
    result.diagnostics.extend(diags)
    raw: dict[int, Any] = {}
    for doc in docs:
        data_ = doc.data
        if isinstance(data_, dict) and data_.get("kind") == "List" and isinstance(data_.get("items"), list):
            items = data_["items"]
            for item, line in zip(items, getattr(items, "item_lines", [doc.line] * len(items))):
                raw[line] = item
        else:
            raw[doc.line] = data_
        _load_document(doc, result)
    return result, raw
