"""The live policy: loaded at start-up, swapped whole on reload, the old one kept when the new is broken."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from broker.config import BoundaryConfig
from broker.errors import ConfigError
from broker.policy.engine import Policy
from broker.policy.model import compile_policy

log = logging.getLogger(__name__)

INLINE_SOURCE = "inline policy"
MAX_POLICY_BYTES = 1_048_576
_MERGE_TAG = "tag:yaml.org,2002:merge"

Stamp = tuple[int, int, int]


class PolicySource:
    """Holds the current compiled policy and replaces it when its file changes."""

    def __init__(
        self,
        *,
        path: Path | None,
        inline: Mapping[str, Any] | None,
        boundaries: Mapping[str, BoundaryConfig] | Iterable[BoundaryConfig],
        attestors: Collection[str],
    ) -> None:
        if (path is None) == (inline is None):
            raise ConfigError("policy: set exactly one of policy_file or policy (inline)")
        self._path = Path(path) if path is not None else None
        self._inline = inline
        self._boundaries = boundaries if isinstance(boundaries, Mapping) else {b.name: b for b in boundaries}
        self._attestors = frozenset(attestors)
        self._lock = threading.Lock()
        # called as listener(old, new) after each successful reload (broker/grants/withdrawal.py)
        self.listeners: list[Callable[[Policy, Policy], None]] = []
        self._stamp = self._file_stamp()
        self._policy = self._load()
        self.reload_failures = 0  # broken edits since start (a metric)
        self.reload_error: str | None = None  # why the newest edit was refused; None once one loads
        _log_loaded(self._policy)

    @property
    def current(self) -> Policy:
        # A single attribute read is atomic and policies are immutable, so readers take no lock.
        return self._policy

    def reload(self) -> bool:
        """Re-read the file; on any error keep the old policy, log why, and return False."""
        if self._path is None:
            return False
        with self._lock:
            # Stamp before reading: a write racing the read shows up as a new stamp next time.
            self._stamp = self._file_stamp()
            try:
                policy = self._load()
            except ConfigError as exc:
                log.error("policy reload failed; keeping policy %s\n%s", self._policy.digest[:12], exc.detail)
                self.reload_failures += 1
                self.reload_error = exc.detail
                return False
            old, self._policy, self.reload_error = self._policy, policy, None
            _log_loaded(policy)
            # under the lock, so listeners see reloads in order; requests read `current` without it
            for listener in self.listeners:
                try:
                    listener(old, policy)
                except Exception:  # a listener keeps its own retry state; the new policy is in force regardless
                    log.exception("policy reload listener failed")
        return True

    def maybe_reload(self) -> bool:
        """Reload only if the file's mtime, size or inode changed since the last attempt."""
        if self._path is None:
            return False
        stamp = self._file_stamp()
        # A missing file is usually an editor mid-rename; keep serving and look again next tick.
        if stamp is None or stamp == self._stamp:
            return False
        return self.reload()

    def install_sighup(self) -> None:
        """Reload on SIGHUP; Python only allows this from the main thread, elsewhere it is a no-op."""
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
            log.debug("SIGHUP reload not installed: not on the main thread or no SIGHUP here")
            return
        signal.signal(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        # The handler runs on the main thread, maybe while it is inside reload(); reloading on
        # another thread cannot deadlock on the lock and does not stall the event loop.
        threading.Thread(target=self.reload, name="policy-sighup-reload", daemon=True).start()

    def _load(self) -> Policy:
        if self._path is None:
            data, source = self._inline, INLINE_SOURCE
        else:
            data, source = read_policy_file(self._path), str(self._path)
        return compile_policy(data or {}, source=source, boundaries=self._boundaries, attestors=self._attestors)

    def _file_stamp(self) -> Stamp | None:
        try:
            st = self._path.stat() if self._path is not None else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino) if st else None


def read_policy_file(path: Path) -> Mapping[str, Any]:
    """Parse a policy YAML file, refusing oversized files, empty files and duplicate keys."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read policy file: {exc.strerror}") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise ConfigError(f"{path}: policy file is larger than {MAX_POLICY_BYTES} bytes")
    try:
        loaded = yaml.load(raw, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if loaded is None:
        # An emptied file would silently deny everyone; make it explicit with `rules: []`.
        raise ConfigError(f"{path}: policy file is empty (write 'rules: []' to deny everything)")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with a 'rules' list")
    return loaded


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a repeated key, which plain YAML resolves silently (last one wins)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        if isinstance(key, Hashable):
            seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _log_loaded(policy: Policy) -> None:
    log.info("policy loaded from %s: %d rules, digest %s", policy.source, len(policy.rules), policy.digest)
    for warning in policy.warnings:
        log.warning("policy: %s", warning)
