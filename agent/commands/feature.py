"""`Commands`: HQ's signed commands (docs/protocol.md 8.8), each run at most once and answered on `up/command_ack`.

A command arrives on `down/command` (this store) or `all/down/command` (every store of the tenant) as a
compact JWS (sync/command_doc.py), on the link thread, which only hands it to the agent's loop. There, one at
a time in arrival order: verify (signature, kid, tenant, store, expiry, the command and its args); take its
cmd_id in `command_log` (one durable writer transaction, BEFORE it runs: a cmd_id seen before is refused
`replayed`, even after a restart or a crash mid-command); run it; record the result; acknowledge.

- `reload`: the config file again, exactly as SIGHUP (PushedConfig.reload_file): an invalid file is refused
  `invalid_config` with its field-level problems and the running config kept.
- `resync` `{"kinds": [...]}`: forget the held versions of those record kinds (`down_versions`) and say the
  versions again (`up/versions`): HQ resends every document of those kinds, which apply as new (each record
  carries its own version, so nothing newer is overwritten by an older one).
- `diagnostics`: a bundle (agent/commands/diagnostics.py) uploaded on `up/diagnostics` in parts.
- `rotate_token`: a new local API token into `[api] token_file` (0600); the old one is refused from that
  moment. The token never leaves the PC: the ack carries its fingerprint only. Refused `token_configured`
  when the token comes from the environment or the config (then it is rotated there).

Every refusal (a bad signature, garbage) is also counted in `sync.rejected_down` by reason.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from posedge.agent.commands import diagnostics
from posedge.agent.config import Config
from posedge.agent.feature import EventListener
from posedge.agent.logs import ensure_ring, mask_personal
from posedge.agent.sales import SaleParticipant
from posedge.agent.store.writer import StoreWriter
from posedge.agent.token import fingerprint, rotate_token
from posedge.sync.codes import Keyring
from posedge.sync.command_doc import Command, peek_command, verify_command
from posedge.sync.config_doc import DocumentRefused
from posedge.sync.down import MAX_CONFIG_BYTES, CommandAck, DiagnosticsPart, build_command_ack, build_diagnostics
from posedge.sync.ids import uuid7

if TYPE_CHECKING:
    from posedge.agent.service import Agent

log = logging.getLogger("posedge.agent.commands")

PRUNE_AFTER_EXP_S = 86400
MAX_PENDING = 64  # commands waiting for the loop; past that a command is refused `busy` (a flood, not HQ)
WRITE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Outcome:
    result: str  # ok | refused | failed
    reason: str | None = None
    detail: str | None = None
    data: dict[str, Any] | None = None


@dataclass
class Seams:
    """What the commands need of the rest of the agent; filled by `wire` (Agent._link_features)."""

    keyring: Callable[[], Keyring] = lambda: Keyring({})
    send: Callable[[str, bytes], bool] = lambda name, payload: False
    count_rejected: Callable[[str], None] = lambda reason: None
    config: Callable[[], Config] | None = None
    config_path: str | None = None
    reload_file: Callable[[str], Awaitable[bool]] | None = None
    file_reload: Callable[[], dict[str, Any] | None] = lambda: None
    send_versions: Callable[[], None] = lambda: None
    connected: Callable[[], bool] = lambda: False
    status: Callable[[], dict[str, Any]] = dict
    versions: Callable[[], dict[str, Any]] = dict
    token: Callable[[], str | None] = lambda: None
    set_token: Callable[[str], None] = lambda token: None
    secrets: Callable[[], list[str]] = list


def take(conn: sqlite3.Connection, command: Command, now: float) -> tuple[str, str | None] | None:
    """In the writer: claim the cmd_id; (received_at, result) of the earlier claim when it was taken before."""
    row = conn.execute("SELECT received_at, result FROM command_log WHERE cmd_id = ?", (command.cmd_id,)).fetchone()
    if row is not None:
        return str(row[0]), row[1]
    conn.execute("DELETE FROM command_log WHERE exp < ?", (int(now) - PRUNE_AFTER_EXP_S,))
    conn.execute("INSERT INTO command_log (cmd_id, cmd, scope, exp, received_at) VALUES (?, ?, ?, ?, ?)",
                 (command.cmd_id, command.cmd, command.scope, command.exp, _now()))
    return None


def finish(conn: sqlite3.Connection, cmd_id: str, outcome: Outcome) -> None:
    conn.execute("UPDATE command_log SET result = ?, reason = ?, done_at = ? WHERE cmd_id = ?",
                 (outcome.result, outcome.reason, _now(), cmd_id))


def forget_versions(conn: sqlite3.Connection, kinds: Sequence[str]) -> int:
    marks = ",".join("?" * len(kinds))
    return conn.execute(f"DELETE FROM down_versions WHERE kind IN ({marks})", tuple(kinds)).rowcount


class Commands:
    name = "commands"
    participants: Sequence[SaleParticipant] = ()

    def __init__(self, config: Config, writer: StoreWriter) -> None:
        self.tenant = config.store.tenant
        self.store_id = config.store.id
        self.writer = writer
        self.seams = Seams()
        self.listeners: list[EventListener] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self.results: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.last: dict[str, Any] | None = None
        self._count_lock = threading.Lock()  # answers come from the loop and (refused early) the link thread

    # -- the feature's lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        ensure_ring()

    async def stop(self) -> None:
        pending = [t for t in self._tasks if not t.done()]
        if pending:  # a command in flight finishes (each is short); one that hangs is left to the bound
            await asyncio.wait([asyncio.wrap_future(t) for t in pending], timeout=5.0)
        self.loop = None

    def status(self) -> dict[str, Any]:
        with self._count_lock:
            return {"results": dict(self.results), "refused": dict(self.refused), "last": self.last}

    # -- a command from HQ (link thread) -------------------------------------------------------------
    def on_down(self, store: str | None, name: str, payload: bytes) -> None:
        loop = self.loop
        if loop is None:
            log.warning("event=command_dropped reason=not_running")
            return
        if len(payload) > MAX_CONFIG_BYTES:  # refused here: a flood of big garbage never reaches the loop
            self._answer(None, None, Outcome("refused", "malformed", f"{len(payload)} bytes; a command is at most "
                                                                     f"{MAX_CONFIG_BYTES}"))
            return
        if len(self._tasks) >= MAX_PENDING:
            self._answer(None, None, Outcome("refused", "busy", f"{MAX_PENDING} commands are waiting already"))
            return
        future = asyncio.run_coroutine_threadsafe(self.handle(store, payload), loop)
        self._tasks.add(future)  # type: ignore[arg-type]
        future.add_done_callback(self._tasks.discard)

    async def handle(self, store: str | None, payload: bytes) -> None:
        """Verify, take the cmd_id, run, record, acknowledge (on the loop; one command at a time)."""
        assert self._lock is not None
        async with self._lock:
            try:
                await self._handle(store, payload)
            except Exception:  # a bug here must not cost the link or the next command
                log.exception("event=command_failed_unexpectedly")

    async def _handle(self, store: str | None, payload: bytes) -> None:
        try:
            token = payload.decode("ascii").strip()
        except UnicodeDecodeError:
            self._answer(None, None, Outcome("refused", "malformed", "the payload is not an ASCII compact JWS"))
            return
        try:
            command = verify_command(token, self.seams.keyring(), self.tenant, store)
        except DocumentRefused as exc:
            cmd_id, cmd = peek_command(token)
            self._answer(cmd_id, cmd, Outcome("refused", exc.reason, exc.message))
            return
        try:
            earlier = await asyncio.wrap_future(self.writer.submit(lambda conn: take(conn, command, time.time())))
        except Exception as exc:  # not taken, so not run; HQ may send it again
            self._answer(command.cmd_id, command.cmd, Outcome("failed", "storage_error", f"cannot record it: {exc}"))
            return
        if earlier is not None:
            received_at, result = earlier
            self._answer(command.cmd_id, command.cmd, Outcome(
                "refused", "replayed", f"cmd_id {command.cmd_id} was taken at {received_at} "
                                       f"({result or 'not finished'}); a command runs at most once"))
            return
        log.info("event=command_started cmd=%s cmd_id=%s scope=%s kid=%s", command.cmd, command.cmd_id,
                 command.scope, command.kid)
        try:
            outcome = await self._run(command)
        except Exception as exc:
            log.exception("event=command_error cmd=%s cmd_id=%s", command.cmd, command.cmd_id)
            outcome = Outcome("failed", "error", f"{exc.__class__.__name__}: {exc}")
        try:
            await asyncio.wrap_future(self.writer.submit(lambda conn: finish(conn, command.cmd_id, outcome),
                                                         durable=False))
        except Exception as exc:  # it ran; only its bookkeeping is lost (a replay is refused all the same)
            log.warning("event=command_result_not_saved cmd_id=%s error=%r", command.cmd_id, str(exc))
        self._answer(command.cmd_id, command.cmd, outcome)

    async def _run(self, command: Command) -> Outcome:
        if command.cmd == "reload":
            return await self._reload()
        if command.cmd == "resync":
            return await self._resync(command.args["kinds"])
        if command.cmd == "diagnostics":
            return await self._diagnostics(command, command.args["log_lines"])
        return await self._rotate_token()

    # -- the commands ----------------------------------------------------------------------------------
    async def _reload(self) -> Outcome:
        path, reload_file = self.seams.config_path, self.seams.reload_file
        if path is None or reload_file is None:
            return Outcome("refused", "no_config_file", "the agent runs on its embedded defaults, with no file")
        if await reload_file(path):
            info = self.seams.file_reload() or {}
            changed, restart = info.get("changed") or [], info.get("needs_restart") or []
            detail = f"reloaded; changed: {', '.join(changed) or 'nothing'}"
            if restart:
                detail += f"; needs a restart: {', '.join(restart)}"
            return Outcome("ok", None, detail, {"changed": ",".join(changed), "needs_restart": ",".join(restart)})
        issues = (self.seams.file_reload() or {}).get("issues") or []
        return Outcome("refused", "invalid_config", "the file was refused, the running config kept: "
                       + "; ".join(issues))

    async def _resync(self, kinds: list[str]) -> Outcome:
        if not self.seams.connected():
            return Outcome("failed", "offline", "the link to HQ is down")
        forgotten = await asyncio.wrap_future(self.writer.submit(lambda conn: forget_versions(conn, kinds)))
        self.seams.send_versions()
        log.info("event=command_resync kinds=%s forgotten=%d", ",".join(kinds), forgotten)
        return Outcome("ok", None, f"asked HQ to resend {', '.join(kinds)}", {"kinds": ",".join(kinds)})

    async def _diagnostics(self, command: Command, log_lines: int) -> Outcome:
        if self.seams.config is None:
            return Outcome("failed", "not_running", "the agent is not wired")
        config = self.seams.config()
        ring = ensure_ring()
        encoded = await asyncio.to_thread(self._bundle, config, ring.lines(log_lines))
        bundle_id = str(uuid7())
        for number, data in enumerate(encoded.parts):
            part = DiagnosticsPart(str(uuid7()), self.tenant, self.store_id, command.cmd_id, bundle_id, number,
                                   len(encoded.parts), encoded.sha256, data)
            if not self.seams.send("diagnostics", build_diagnostics(part)):
                return Outcome("failed", "offline", "the link to HQ is down")
        log.info("event=command_diagnostics_sent bundle_id=%s parts=%d gzip_bytes=%d log_lines=%d", bundle_id,
                 len(encoded.parts), encoded.gzip_bytes, encoded.log_lines)
        return Outcome("ok", None, f"bundle {bundle_id} sent in {len(encoded.parts)} part(s)",
                       {"bundle_id": bundle_id, "parts": len(encoded.parts), "gzip_bytes": encoded.gzip_bytes,
                        "sha256": encoded.sha256, "log_lines": encoded.log_lines})

    def _bundle(self, config: Config, logs: list[str]) -> diagnostics.Encoded:
        bundle = diagnostics.build(config, self.seams.status(), self.seams.versions(), logs)
        return diagnostics.encode(bundle, self.seams.secrets())

    async def _rotate_token(self) -> Outcome:
        if self.seams.config is None:
            return Outcome("failed", "not_running", "the agent is not wired")
        api = self.seams.config().api
        if api.token is not None:
            return Outcome("refused", "token_configured", "the token comes from POSEDGE_API_TOKEN or [api] token; "
                                                          "rotate it there")
        new = await asyncio.to_thread(rotate_token, api.token_file)
        self.seams.set_token(new)  # on the loop: the next request is checked against it, the old one is refused
        return Outcome("ok", None, "rotated; store IT reads the new token from [api] token_file on the store PC",
                       {"rotated": True, "fingerprint": fingerprint(new)})

    # -- answering ---------------------------------------------------------------------------------------
    def _answer(self, cmd_id: str | None, cmd: str | None, outcome: Outcome) -> None:
        detail = mask_personal(outcome.detail)[:1000] if outcome.detail else None
        with self._count_lock:
            if outcome.result == "refused":
                self.refused[outcome.reason or "?"] += 1
            self.results[outcome.result] += 1
            self.last = {"cmd_id": cmd_id, "cmd": cmd, "result": outcome.result, "reason": outcome.reason,
                         "at": _now()}
        if outcome.result == "refused":
            self.seams.count_rejected(outcome.reason or "?")
            log.warning("event=command_refused cmd=%s cmd_id=%s reason=%s detail=%r", cmd, cmd_id, outcome.reason,
                        (detail or "")[:300])
        else:
            log.log(logging.INFO if outcome.result == "ok" else logging.WARNING,
                    "event=command_%s cmd=%s cmd_id=%s reason=%s", outcome.result, cmd, cmd_id, outcome.reason)
        ack = CommandAck(str(uuid7()), self.tenant, self.store_id, cmd_id, cmd, outcome.result,  # type: ignore[arg-type]
                         outcome.reason, detail, outcome.data)
        self.seams.send("command_ack", build_command_ack(ack))


def wire(agent: "Agent") -> None:
    """The agent's side of the commands (called from Agent._link_features, before the link starts)."""
    from posedge.agent.hq_sync.inbox import merged_versions, send_versions

    commands = agent.commands
    sync, pushed = agent.sync, agent.pushed_config

    def set_token(token: str) -> None:
        agent.token = token

    def secrets() -> list[str]:
        return diagnostics.secret_values(agent.config, [agent.token])

    commands.seams = Seams(
        keyring=lambda: pushed.keyring, send=sync.send, count_rejected=sync.count_down_rejected,
        config=lambda: agent.config, config_path=agent.config_path, reload_file=pushed.reload_file,
        file_reload=lambda: pushed.file_reload, send_versions=lambda: send_versions(sync),
        connected=lambda: sync.link is not None and sync.link.connected, status=agent.status,
        versions=lambda: merged_versions(sync), token=lambda: agent.token, set_token=set_token, secrets=secrets)
    sync.down_routes["command"] = commands.on_down


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")

