"""Calibration statistics as a cached analysis with explicit invalidation (aesthetics 4.12).

An entry is keyed by (graph fingerprint, windows digest, spec): the same graph measured on the
same windows with the same collectors. A pass that changes activations changes the graph
fingerprint, so stale statistics are never found; `invalidate` drops them to free memory (and
their files). Entries live in memory and, when a directory is given, in one file per key.
Returned SiteStats are the cached objects: treat them as read-only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from qpasses.cache import publish, staging_dir
from qpasses.calibration.stats import SiteStats, StatsSpec

Key = tuple[str, str, StatsSpec]


def windows_digest(windows: torch.Tensor) -> str:
    """A content hash of windows[n, L] (shape, dtype and token ids)."""
    w = windows.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tuple(w.shape)} {w.dtype}".encode())
    h.update(w.numpy().tobytes())
    return h.hexdigest()[:32]


def _spec_text(spec: StatsSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StatsCache:
    """get/put of {site name: SiteStats} per key; counts hits and misses."""

    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._entries: dict[Key, dict[str, SiteStats]] = {}
        self.hits = self.misses = 0

    def _file(self, fingerprint: str, digest: str, spec: StatsSpec) -> Path:
        return self.directory / f"{_short(fingerprint)}-{_short(digest + _spec_text(spec))}.pt"

    def get(self, fingerprint: str, digest: str, spec: StatsSpec,
            sites: Iterable[str] | None = None) -> dict[str, SiteStats] | None:
        """The cached statistics for the key (only `sites` when given), or None when the key or
        any requested site is missing."""
        key = (fingerprint, digest, spec)
        entry = self._entries.get(key)
        if entry is None and self.directory is not None:
            entry = self._load(key)
        wanted = None if sites is None else list(sites)
        if entry is None or (wanted is not None and any(s not in entry for s in wanted)):
            self.misses += 1
            return None
        self.hits += 1
        return {s: entry[s] for s in (entry if wanted is None else wanted)}

    def put(self, fingerprint: str, digest: str, spec: StatsSpec, stats: Mapping[str, SiteStats]) -> None:
        """Add statistics under the key (sites already cached under it are replaced)."""
        if any(s.spec != spec for s in stats.values()):
            raise ValueError("statistics were collected with a different spec than the cache key")
        key = (fingerprint, digest, spec)
        entry = self._entries.setdefault(key, {})
        entry.update(stats)
        if self.directory is not None:
            path = self._file(*key)
            with staging_dir(path) as tmp:
                torch.save({"key": [fingerprint, digest, _spec_text(spec)],
                            "stats": {name: s.state() for name, s in entry.items()}}, tmp / path.name)
                publish(tmp / path.name, path)

    def _load(self, key: Key) -> dict[str, SiteStats] | None:
        path = self._file(*key)
        if not path.exists():
            return None
        saved = torch.load(path, weights_only=True)
        fingerprint, digest, spec = key
        if saved["key"] != [fingerprint, digest, _spec_text(spec)]:
            return None
        entry = {name: SiteStats.from_state(spec, st) for name, st in saved["stats"].items()}
        self._entries[key] = entry
        return entry

    def invalidate(self, fingerprint: str | None = None) -> int:
        """Drop the entries of one graph fingerprint (all entries when None), in memory and on
        disk; returns how many keys were dropped."""
        dropped = [k for k in self._entries if fingerprint is None or k[0] == fingerprint]
        for k in dropped:
            del self._entries[k]
        if self.directory is None:
            return len(dropped)
        files = set(self.directory.glob("*.pt" if fingerprint is None else f"{_short(fingerprint)}-*.pt"))
        for f in files:
            f.unlink()
        return len(files | {self._file(*k) for k in dropped})

    def __len__(self) -> int:
        return len(self._entries)
