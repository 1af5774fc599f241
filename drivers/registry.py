"""Driver registries: the `type` of a `[[scanners]]` or `[[printers]]` table names one driver.

A driver module registers itself with a decorator; `load_drivers()` imports every module of a
driver package once (at config-load time, never at import time), so adding a scanner model is
adding one file. A driver whose optional library is missing still registers and reports
`usable() == (False, reason)`: the agent turns that one device off with the reason, nothing else.
"""

from __future__ import annotations

import builtins
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class DriverConfig(BaseModel):
    """Base of every driver's config table: unknown keys are errors, `type` and `name` always present."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="driver type, one of the registered names")
    name: str = Field(
        default="",
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]*$",
        description="unique name of this device; defaults to '<type>-<index>'",
    )


@dataclass(frozen=True)
class DriverEntry(Generic[T]):
    type: str
    # The class, kept as what the registry does with it: call it with the config (and the caller's
    # arguments). builtins.type below: the field `type` above shadows the builtin in this class body.
    driver: Callable[..., T]
    config_model: builtins.type[DriverConfig]
    usable: Callable[[], tuple[bool, str]]


def _always_usable() -> tuple[bool, str]:
    return True, ""


class DriverRegistry(Generic[T]):
    """Type name -> driver class and its config model, for one kind of device."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self._package = package
        self._entries: dict[str, DriverEntry[T]] = {}
        self._loaded = False

    def register(
        self,
        type_name: str,
        config_model: type[DriverConfig],
        usable: Callable[[], tuple[bool, str]] = _always_usable,
    ) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if type_name in self._entries and self._entries[type_name].driver is not cls:
                raise ValueError(f"{self.kind} driver type {type_name!r} registered twice")
            self._entries[type_name] = DriverEntry(type_name, cls, config_model, usable)
            return cls

        return decorate

    def load_drivers(self) -> None:
        """Import every module of the driver package so that each registers itself."""
        if self._loaded:
            return
        package = importlib.import_module(self._package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_") and module.name != "base":
                importlib.import_module(f"{self._package}.{module.name}")
        self._loaded = True

    def types(self) -> list[str]:
        self.load_drivers()
        return sorted(self._entries)

    def get(self, type_name: str) -> DriverEntry[T] | None:
        self.load_drivers()
        return self._entries.get(type_name)

    def config_model(self, type_name: str) -> type[DriverConfig] | None:
        entry = self.get(type_name)
        return entry.config_model if entry else None

    def create(self, config: DriverConfig, *args: Any, **kwargs: Any) -> T:
        entry = self.get(config.type)
        if entry is None:
            raise KeyError(config.type)
        return entry.driver(config, *args, **kwargs)


SCANNERS: DriverRegistry[Any] = DriverRegistry("scanner", "posedge.drivers.scanners")
PRINTERS: DriverRegistry[Any] = DriverRegistry("printer", "posedge.drivers.printers")
