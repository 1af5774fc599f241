"""The systemd unit posedge runs under: rendered from the config, so device access is what it names.

`render_unit(UnitOptions())` is the unit shipped as packaging/systemd/posedge.service (a test keeps
them equal); `posedge service install` renders it with the store's config: a `DeviceAllow=` line for
each device path its scanners and printers name (or the device class, for a device chosen by USB id,
name or index), and `ReadWritePaths=` for state kept outside the state directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posedge.agent.config import Config

UNIT_NAME = "posedge.service"
USER = "posedge"
DEVICE_GROUPS = ("dialout", "input", "video", "lp")  # serial ports, HID event devices, cameras, printers
DEFAULT_BIN = Path("/usr/bin/posedge")
DEFAULT_CONFIG = Path("/etc/posedge/posedge.toml")
STATE_DIR = Path("/var/lib/posedge")  # StateDirectory=posedge; the working directory, so var/... lands here
LOGS_DIR = Path("/var/log/posedge")
WATCHDOG_S = 30
STOP_MARGIN_S = 27  # past [api] shutdown_grace_s: the agent's own stop bound (run.STOP_BOUND_S) and some


@dataclass(frozen=True)
class UnitOptions:
    bin: Path = DEFAULT_BIN
    config: Path = DEFAULT_CONFIG
    user: str = USER
    device_allow: tuple[str, ...] = ()  # "PATH-or-class MODE", as DeviceAllow= takes them
    read_write_paths: tuple[str, ...] = ()
    shutdown_grace_s: int = 3


def options_for(config: Config | None, bin: Path = DEFAULT_BIN, config_path: Path = DEFAULT_CONFIG) -> UnitOptions:
    if config is None:
        return UnitOptions(bin=bin, config=config_path)
    return UnitOptions(bin=bin, config=config_path, device_allow=tuple(device_allow(config)),
                       read_write_paths=tuple(read_write_paths(config)),
                       shutdown_grace_s=config.api.shutdown_grace_s)


def render_unit(options: UnitOptions) -> str:
    devices = "".join(f"DeviceAllow={entry}\n" for entry in options.device_allow)
    writable = "".join(f"ReadWritePaths=-{path}\n" for path in options.read_write_paths)
    return f"""# posedge store agent: written by `posedge service install` (docs/operations.md).
# The same unit, for the default config, ships as packaging/systemd/posedge.service.
[Unit]
Description=posedge store agent (scanners, receipts, offline sales, HQ sync)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={options.bin} run --config {options.config}
User={options.user}
Group={options.user}
WorkingDirectory={STATE_DIR}
StateDirectory=posedge
StateDirectoryMode=0700
ConfigurationDirectory=posedge
ConfigurationDirectoryMode=0750
LogsDirectory=posedge
LogsDirectoryMode=0750
UMask=0077
Restart=on-failure
RestartSec=2s
WatchdogSec={WATCHDOG_S}s
TimeoutStartSec=90s
TimeoutStopSec={options.shutdown_grace_s + STOP_MARGIN_S}s
SyslogIdentifier=posedge
# The sync link lowers its own thread to nice 19 while it builds a batch for HQ and comes back to the
# process's nice 0 between batches, to read HQ's answers at once: coming back needs this limit.
LimitNICE=+0

# Hardening: the agent writes only its state and log directories, sees no home directories, and opens
# only the devices its config names.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
DevicePolicy=closed
{devices}{writable}
[Install]
WantedBy=multi-user.target
"""


def device_allow(config: Config) -> list[str]:
    """DeviceAllow= entries for the devices the config names, in config order, without repeats."""
    entries: list[str] = []
    for driver in [*config.scanner_configs(), *config.printer_configs()]:
        for entry in _device_entries(driver):
            if entry not in entries:
                entries.append(entry)
    return entries


def _device_entries(driver: Any) -> list[str]:
    kind = driver.type
    if kind == "serial":  # scanner or printer
        port = str(driver.port)
        return [f"{port} rw"] if port.startswith("/") else ["char-ttyACM rw", "char-ttyUSB rw"]
    if kind == "hid":
        return [f"{driver.path} r"] if driver.path else ["char-input r"]
    if kind == "hidpos":
        return [f"{driver.path} rw"] if driver.path else ["char-hidraw rw"]
    if kind == "camera":
        source = driver.source
        if isinstance(source, int):
            return ["char-video4linux rw"]
        return [f"{source} rw"] if str(source).startswith("/dev/") else []
    if kind == "usb":
        return ["char-usb_device rw"]
    if kind == "file" and str(driver.path).startswith("/dev/"):
        return [f"{driver.path} rw"]
    return []  # tcp, stdin, network printers, files: no device node


def read_write_paths(config: Config) -> list[str]:
    """Absolute folders the agent writes outside its state and log directories (ProtectSystem=strict)."""
    folders = [config.storage.path.parent, config.api.token_file.parent]
    for printer in config.printer_configs():
        path = Path(getattr(printer, "path", "") or "")
        if printer.type == "file" and not str(path).startswith("/dev/"):
            folders.append(path if path.is_dir() or not path.suffix else path.parent)
    out: list[str] = []
    for folder in folders:
        if not folder.is_absolute() or _inside(folder, STATE_DIR) or _inside(folder, LOGS_DIR):
            continue  # relative paths are inside the working directory, the state directory
        if str(folder) not in out:
            out.append(str(folder))
    return out


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
