"""link-down's cut and its undo: every federation link of a cluster taken out of ``links.json``
in one write, and put back the same way.

``fedctl unlink`` per link would do it one link at a time, each a process start and a wait
for both control planes - seconds apiece, during which the fault is half in force and the
baseline is no longer one. Here the cluster's links go in one atomic write (the control
planes poll the file and drop each other's endpoints at once, as after ``fedctl unlink``);
the removed entries are saved in the drill's folder first, and the undo puts back those
very entries (same probe policy, same applied documents and accepted bundles) merged into
whatever the file holds by then, then waits until the control planes report the links up.
Putting back entries that are already there changes nothing, so the undo can be replayed.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from ._link_store import LinkSet, links_path, read_links, write_links
from ._state import alive, read_state, write_atomic

SETTLE_TIMEOUT = 20.0
"""Seconds to wait for the control planes to drop (or bring back) the links."""


def cluster_links(links: LinkSet, cluster: str) -> LinkSet:
    """The entries of ``links`` that join ``cluster`` to another cluster."""
    return LinkSet(tuple(l for l in links.links if l.has(cluster)),
                   tuple(x for x in links.applied if cluster in (x.cluster, x.peer.cluster)),
                   tuple(x for x in links.accepted if cluster in (x.cluster, x.peer)))


def directions(cut: LinkSet) -> list[tuple[str, str]]:
    """(importer, exporter) pairs the control planes report for these entries (``link list`` rows)."""
    out: list[tuple[str, str]] = []
    for link in cut.links:
        a, b = link.clusters
        out += [(a, b), (b, a)]
    out += [(x.cluster, x.peer.cluster) for x in cut.applied]
    return list(dict.fromkeys(out))


def without(links: LinkSet, cut: LinkSet) -> LinkSet:
    return LinkSet(tuple(l for l in links.links if l not in cut.links),
                   tuple(x for x in links.applied if x not in cut.applied),
                   tuple(x for x in links.accepted if x not in cut.accepted))


def merged(links: LinkSet, cut: LinkSet) -> LinkSet:
    """``links`` with ``cut``'s entries back (an entry for the same clusters is replaced by the saved one)."""
    out = links
    for link in cut.links:
        kept = tuple(l for l in out.links if set(l.clusters) != set(link.clusters))
        out = replace(out, links=(*kept, link))
    for applied in cut.applied:
        out = out.with_applied(applied)
    for accepted in cut.accepted:
        out = out.with_accepted(accepted)
    return out


def save_cut(cut: LinkSet, saved: Path) -> None:
    write_atomic(saved, json.dumps(cut.to_json(), indent=1).encode() + b"\n", mode=0o600)


def cut_links(mesh_dir: Path, cut: LinkSet) -> None:
    write_links(mesh_dir, without(read_links(mesh_dir), cut))


def wait_links(mesh_dir: Path, pairs: list[tuple[str, str]], *, gone: bool,
               timeout: float = SETTLE_TIMEOUT) -> list[str]:
    """Wait until the control planes report every pair gone (or up); what is still not. Nothing to
    wait for when the mesh is not running."""
    from ._cli_link import _wait
    state = read_state(mesh_dir)
    if not pairs or not alive(state.supervisor.pid, state.supervisor.start_time):
        return []
    return _wait(mesh_dir, pairs, timeout, gone=gone)


def restore_links(links_file: str, saved: str) -> str:
    """The undo of a cut: ``saved``'s entries back into ``links_file``, then wait until they are up."""
    mesh_dir = Path(links_file).parent.parent  # DIR/.meshfed/links.json
    try:
        cut = LinkSet.from_json(json.loads(Path(saved).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"cannot read the saved links {saved}: {exc}"
    if Path(links_file) != links_path(mesh_dir):
        return f"{links_file} is not a mesh's links file; nothing restored"
    write_links(mesh_dir, merged(read_links(mesh_dir), cut))
    names = ", ".join("-".join(l.clusters) for l in cut.links) or "none"
    began = time.monotonic()
    try:
        missing = wait_links(mesh_dir, directions(cut), gone=False)
    except Exception as exc:  # noqa: BLE001 - the links are back in the file; waiting is a courtesy
        return f"restored links {names}; could not check them: {exc}"
    if missing:
        return f"restored links {names}; not up after {SETTLE_TIMEOUT:g} s: " + "; ".join(missing)
    return f"restored links {names}; up again after {time.monotonic() - began:.1f} s"
