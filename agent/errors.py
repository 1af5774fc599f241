"""The agent's error tree. Each class carries its machine `code`, HTTP `status` and default message.

The local API maps these to JSON bodies `{"code", "message", ...details}` in one place
(agent/api/errors.py); the CLI prints `message`.
"""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    code = "internal_error"
    status = 500
    message = "internal error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or self.message
        self.details = details
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class InvalidInput(AgentError):
    code = "invalid_input"
    status = 422
    message = "the request is not valid"


class NotFound(AgentError):
    code = "not_found"
    status = 404
    message = "not found"


class Conflict(AgentError):
    code = "conflict"
    status = 409
    message = "conflicts with what is already recorded"


class StorageError(AgentError):
    """The database cannot take writes now. Nothing partial was written."""

    code = "storage_unavailable"
    status = 503
    message = "storage is unavailable"


class StorageFull(StorageError):
    code = "storage_full"
    status = 507
    message = "the disk holding the database is full"


class StorageReadOnly(StorageError):
    code = "storage_read_only"
    message = "the database file is read-only"


class StorageBusy(StorageError):
    code = "storage_busy"
    message = "the database is locked by another process"


class StorageCorrupt(StorageError):
    code = "storage_corrupt"
    message = "the database file is corrupt"
