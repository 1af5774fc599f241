"""`posedge status`: ask the running agent; if it does not answer, read the database read-only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from posedge.agent.config import Config
from posedge.agent.errors import StorageError
from posedge.agent.store.reader import StoreReader
from posedge.sync import outbox


def read_status(config: Config) -> dict[str, Any]:
    live = _from_agent(config)
    if live is not None:
        return {"running": True, **live}
    return {"running": False, "note": f"no agent answered on {config.api.listen}; read the database directly",
            **_from_database(config)}


def _from_agent(config: Config) -> dict[str, Any] | None:
    api = config.api
    try:
        token = api.token.get_secret_value() if api.token else api.token_file.read_text().strip()
    except OSError:
        token = ""
    host = f"[{api.host}]" if ":" in api.host else api.host
    request = urllib.request.Request(f"http://{host}:{api.port}/v1/status",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        return {"error": f"the agent answered {exc.code}: {exc.read().decode(errors='replace')[:200]}"}
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _from_database(config: Config) -> dict[str, Any]:
    path = config.storage.path
    storage: dict[str, Any] = {"path": str(path)}
    if not path.exists():
        return {"storage": {**storage, "state": "missing"}, "outbox": {"depth": None}}
    reader = StoreReader(path)
    try:
        stats = reader.read_sync(outbox.stats)
        age = stats.oldest_age_s()
        return {"storage": {**storage, "state": "ok", "size_bytes": path.stat().st_size},
                "outbox": {"depth": stats.depth, "oldest_pending_age_s": round(age, 1) if age is not None else None}}
    except StorageError as exc:
        return {"storage": {**storage, "state": exc.code, "error": exc.message}, "outbox": {"depth": None}}
    finally:
        reader.close()


def config_lines(config: dict[str, Any] | None) -> list[str]:
    """`posedge status`'s lines for the `config` section: the pushed versions, the last refusal, the last reload."""
    if not config:
        return []
    scopes = config.get("scopes") or {}
    held = ", ".join(f"{scope} v{info['ver']}" for scope, info in scopes.items() if info) or "none, the file only"
    lines = [f"config: version {config.get('version')} (pushed: {held})"]
    rejected = config.get("rejected")
    if rejected:
        lines.append(f"  last refused: {rejected.get('reason')} ({rejected.get('scope')} v{rejected.get('ver')}, "
                     f"{rejected.get('source')}) at {rejected.get('at')} - {rejected.get('message')}")
    reload = config.get("file_reload")
    if reload:
        lines.append(f"  file reloaded at {reload.get('at')}: {reload.get('result')}"
                     + "".join(f"\n    {issue}" for issue in reload.get("issues", [])))
    return lines


def commands_lines(commands: dict[str, Any] | None) -> list[str]:
    """`posedge status`'s line for the `commands` section: what HQ's signed commands got, and the last one."""
    if not commands or not (commands.get("results") or commands.get("last")):
        return []
    results = ", ".join(f"{n} {result}" for result, n in sorted((commands.get("results") or {}).items()))
    line = f"commands from HQ: {results or 'none answered'}"
    last = commands.get("last")
    if last:
        line += (f"; last {last.get('cmd') or '?'} {last.get('result')}"
                 + (f" ({last['reason']})" if last.get("reason") else "") + f" at {last.get('at')}")
    return [line]
