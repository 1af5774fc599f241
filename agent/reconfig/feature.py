"""`PushedConfig`: config documents HQ signs and pushes (docs/protocol.md 8.5), and the file reloaded on SIGHUP.

It holds the last good document of each scope (tenant, store), verifies a new one (sync/config_doc.py:
signature, kid, tenant, store; here: version and schema), builds the merged config (agent/reconfig/rules.py)
and has the agent apply it (`Agent.apply_config`, which rolls back when a feature fails to take it). A
document applied is kept on disk (`<database dir>/pushed-config/{tenant,store}.jws`, 0600), so a restart
without a broker runs it; at start each is verified again with the configured keys, and one that fails is
reported and ignored. Every outcome goes up to HQ as a `down_ack` and into `config` of GET /v1/status.

Threads: documents arrive on the link thread; the apply runs on the agent's loop, and the link thread
waits for its result (so acks follow the apply, in order). SIGHUP's reload runs on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Coroutine, Sequence

from posedge.agent.config import Config, ConfigError, ConfigIssue, read_config_file, validate_config
from posedge.agent.feature import EventListener
from posedge.agent.reconfig.rules import merged, unpushable
from posedge.agent.sales import SaleParticipant
from posedge.sync.codes import Keyring
from posedge.sync.config_doc import DocumentRefused, SignedDocument, peek_version, verify_document
from posedge.sync.down import DownAck, build_down_ack
from posedge.sync.ids import uuid7

log = logging.getLogger("posedge.agent.config")

SCOPES = ("tenant", "store")  # merge order: the store's document over the tenant's
APPLY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ApplyResult:
    applied: bool
    changed: tuple[str, ...] = ()  # top-level tables that differ
    error: str | None = None  # why applying failed (then everything was put back)
    needs_restart: tuple[str, ...] = ()  # tables changed that only a restart applies (the running ones kept)


ApplyConfig = Callable[[Config], Coroutine[Any, Any, ApplyResult]]
Send = Callable[[str, bytes], bool]


@dataclass
class _Held:
    doc: SignedDocument
    applied_at: str


@dataclass
class Effective:
    """A merged config and the documents in it, with the problems met building it."""

    config: Config
    docs: dict[str, SignedDocument]
    dropped: list[tuple[str, SignedDocument, str]] = field(default_factory=list)  # (scope, doc, why)


class PushedConfig:
    name = "config"
    participants: Sequence[SaleParticipant] = ()

    def __init__(self, file_config: Config, base_raw: dict[str, Any], source: str) -> None:
        self.base_raw = base_raw  # the file's tables as read (the lowest layer)
        self.source = source  # the file's name in messages
        self.keyring = Keyring(file_config.hq.config_keys)
        self.tenant = file_config.store.tenant
        self.store_id = file_config.store.id
        self.directory = file_config.storage.path.parent / "pushed-config"
        self.held: dict[str, _Held] = {}
        self.rejected: dict[str, Any] | None = None
        self.rejected_count = 0
        self.file_reload: dict[str, Any] | None = None
        self.listeners: list[EventListener] = []
        self.apply: ApplyConfig | None = None  # Agent.apply_config, set by the agent
        self.send: Send = lambda name, payload: False  # HqSync.send, set by the agent
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # held / rejected, read by status() from other threads
        self._reload_lock = asyncio.Lock()

    # -- start: the documents on disk --------------------------------------------------------
    def effective_at_start(self, file_config: Config) -> Config:
        """The file config with the last good documents from disk merged on top (each verified again)."""
        docs: dict[str, SignedDocument] = {}
        for scope in SCOPES:
            path = self._path(scope)
            try:
                token = path.read_text(encoding="ascii").strip()
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError) as exc:
                self._reject(scope, "malformed", f"{path}: cannot read: {exc}", None, source="disk")
                continue
            try:
                docs[scope] = self._verify(token, scope)
            except DocumentRefused as exc:
                self._reject(scope, exc.reason, f"{path}: {exc.message}", peek_version(token), source="disk")
        if not docs:
            return file_config
        effective = self.build(self.base_raw, docs)
        for scope, doc, why in effective.dropped:
            self._reject(scope, "invalid_config", f"{self._path(scope)}: {why}", doc.ver, source="disk")
        now = _now()
        self.held = {scope: _Held(doc, now) for scope, doc in effective.docs.items()}
        for scope, doc in effective.docs.items():
            log.info("event=config_pushed_loaded scope=%s ver=%d kid=%s", scope, doc.ver, doc.kid)
        return effective.config

    # -- merging --------------------------------------------------------------------------------
    def build(self, base_raw: dict[str, Any], docs: dict[str, SignedDocument]) -> Effective:
        """The merged config of `base_raw` and `docs`; a document that makes it invalid is dropped, the store's
        first (the file alone must be valid: the caller validated it)."""
        docs = dict(docs)
        dropped: list[tuple[str, SignedDocument, str]] = []
        while True:
            try:
                return Effective(self.validate(base_raw, docs), docs, dropped)
            except ConfigError as exc:
                if not docs:
                    raise
                scope = "store" if "store" in docs else "tenant"
                dropped.append((scope, docs.pop(scope), "; ".join(str(i) for i in exc.issues)))

    def validate(self, base_raw: dict[str, Any], docs: dict[str, SignedDocument]) -> Config:
        layers = [docs[scope].body for scope in SCOPES if scope in docs]
        label = self.source + "".join(f" + pushed {scope} v{docs[scope].ver}" for scope in SCOPES if scope in docs)
        return validate_config(merged(base_raw, layers), label)

    # -- a document from HQ (link thread) -------------------------------------------------------
    def on_down(self, store: str | None, name: str, payload: bytes) -> None:
        scope = "tenant" if store is None else "store"
        ver = None
        try:
            token = payload.decode("ascii").strip()
        except UnicodeDecodeError:
            self._refused(scope, "malformed", "the payload is not an ASCII compact JWS", None)
            return
        try:
            doc = self._verify(token, scope)
            ver = doc.ver
            result = self._consider(doc)
        except DocumentRefused as exc:
            self._refused(scope, exc.reason, exc.message, ver if ver is not None else peek_version(token))
            return
        if result == "ignored":
            self._ack(scope, doc.ver, "ignored", None)
            return
        log.info("event=config_pushed_applied scope=%s ver=%d kid=%s", scope, doc.ver, doc.kid)
        self._ack(scope, doc.ver, "applied", None)

    def _verify(self, token: str, scope: str) -> SignedDocument:
        return verify_document(token, self.keyring, self.tenant, self.store_id if scope == "store" else None)

    def _consider(self, doc: SignedDocument) -> str:
        """'applied' or 'ignored' (the held document again, as a retained message comes on every connect)."""
        scope = doc.scope
        with self._lock:
            held = self.held.get(scope)
        if held is not None and doc.ver <= held.doc.ver:
            if doc.ver == held.doc.ver and doc.token == held.doc.token:
                return "ignored"
            raise DocumentRefused("stale_version", f"version {doc.ver} is not newer than {held.doc.ver}, "
                                                   f"the {scope} version applied")
        source = f"pushed {scope} config v{doc.ver}"
        issues = unpushable(doc.body, source)
        if issues:
            raise DocumentRefused("invalid_config", "; ".join(str(i) for i in issues))
        docs = {s: h.doc for s, h in self.held.items()} | {scope: doc}
        try:
            new = self.validate(self.base_raw, docs)
        except ConfigError as exc:
            raise DocumentRefused("invalid_config", "; ".join(str(i) for i in exc.issues)) from None
        result = self._apply_on_loop(new)
        if not result.applied:
            raise DocumentRefused("invalid_config", f"applying it failed, the previous config runs: {result.error}")
        with self._lock:
            self.held[scope] = _Held(doc, _now())
        self._persist(scope, doc)
        return "applied"

    def _apply_on_loop(self, new: Config) -> ApplyResult:
        if self.apply is None or self.loop is None:
            return ApplyResult(False, error="the agent is not running")
        future = asyncio.run_coroutine_threadsafe(self.apply(new), self.loop)
        try:
            return future.result(APPLY_TIMEOUT_S)
        except FutureTimeout:
            return ApplyResult(False, error=f"not applied within {APPLY_TIMEOUT_S:g} s")

    def _persist(self, scope: str, doc: SignedDocument) -> None:
        path = self._path(scope)
        try:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            temp = path.with_suffix(".tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(doc.token + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except OSError as exc:  # applied all the same; a restart without a broker would run the older one
            log.error("event=config_pushed_not_saved scope=%s path=%s error=%r", scope, path, str(exc))

    def _path(self, scope: str) -> Path:
        return self.directory / f"{scope}.jws"

    # -- reporting ------------------------------------------------------------------------------
    def _refused(self, scope: str, reason: str, message: str, ver: int | None) -> None:
        self._reject(scope, reason, message, ver, source="hq")
        self._ack(scope, ver, "rejected", reason)

    def _reject(self, scope: str, reason: str, message: str, ver: int | None, source: str) -> None:
        log.warning("event=config_pushed_rejected scope=%s ver=%s reason=%s source=%s message=%r",
                    scope, ver, reason, source, message[:500])
        with self._lock:
            self.rejected = {"reason": reason, "at": _now(), "scope": scope, "ver": ver, "source": source,
                             "message": message[:1000]}
            self.rejected_count += 1

    def _ack(self, scope: str, ver: int | None, result: Any, reason: str | None) -> None:
        ack = DownAck(str(uuid7()), self.tenant, self.store_id, "config", "tenant" if scope == "tenant" else "store",
                      ver, result, reason)
        self.send("down_ack", build_down_ack(ack))

    def version(self) -> int:
        """The applied pushed version as one number: the highest of the two scopes (0: the file only)."""
        with self._lock:
            return max((h.doc.ver for h in self.held.values()), default=0)

    def versions(self) -> dict[str, dict[str, int]]:
        """For up/versions on connect: {scope: {"config": version}}."""
        with self._lock:
            return {scope: {"config": self.held[scope].doc.ver if scope in self.held else 0} for scope in SCOPES}

    # -- SIGHUP: the file again ------------------------------------------------------------------
    async def reload_file(self, path: str | os.PathLike[str]) -> bool:
        """Read and validate the file as at start; merge the held documents on top; apply. False: refused."""
        async with self._reload_lock:
            try:
                raw = await asyncio.to_thread(read_config_file, path)
                file_config = validate_config(raw, str(path))
                effective = self.build(raw, {s: h.doc for s, h in self.held.items()})
            except ConfigError as exc:
                return self._reload_refused(exc.issues)
            if self.apply is None:
                return self._reload_refused([ConfigIssue(str(path), "", "the agent is not running")])
            result = await self.apply(effective.config)
            if not result.applied:
                return self._reload_refused([ConfigIssue(str(path), "", f"applying it failed: {result.error}")])
            self.base_raw = raw
            self.keyring = Keyring(file_config.hq.config_keys)
            with self._lock:
                self.held = {s: h for s, h in self.held.items() if s in effective.docs}
            for scope, doc, why in effective.dropped:
                self._reject(scope, "invalid_config", f"no longer fits the file: {why}", doc.ver, source="reload")
            self.file_reload = {"at": _now(), "result": "applied", "changed": list(result.changed),
                                "needs_restart": list(result.needs_restart), "issues": []}
            log.info("event=config_reloaded file=%s changed=%s", path, ",".join(result.changed) or "nothing")
            return True

    def _reload_refused(self, issues: list[ConfigIssue]) -> bool:
        log.error("event=config_reload_refused problems=%d (the running config is kept)", len(issues))
        for issue in issues:
            log.error("event=config_reload_problem %s", issue)
        self.file_reload = {"at": _now(), "result": "refused", "changed": [], "needs_restart": [],
                            "issues": [str(i) for i in issues]}
        return False

    # -- the feature's lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        with self._lock:
            scopes = {scope: ({"ver": h.doc.ver, "iat": h.doc.iat, "kid": h.doc.kid, "applied_at": h.applied_at}
                              if (h := self.held.get(scope)) else None) for scope in SCOPES}
            return {"version": max((h.doc.ver for h in self.held.values()), default=0), "scopes": scopes,
                    "rejected": self.rejected, "rejected_count": self.rejected_count,
                    "config_kids": self.keyring.kids, "file_reload": self.file_reload}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
