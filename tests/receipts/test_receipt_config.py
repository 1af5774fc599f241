"""`[receipt]` and `[[printers]]` validation: clear errors naming the key; the default printer."""

from __future__ import annotations

from pathlib import Path

import pytest

from posedge.agent.config import ConfigError, validate_config


def problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate_config(raw, "posedge.toml")
    return [str(issue) for issue in caught.value.issues]


def test_default_printer_is_the_file_printer_into_var_receipts():
    config = validate_config({})
    [printer] = config.printer_configs()
    assert (printer.type, printer.name, printer.path) == ("file", "receipts", Path("var/receipts"))
    assert config.receipt.columns == 32 and config.receipt.code_page == "GB18030"


def test_paper_width_and_code_page_are_checked():
    found = problems({"receipt": {"width_mm": 76, "code_page": "UTF-8"}})
    assert any(p.startswith("posedge.toml: receipt.width_mm: found 76") for p in found)
    assert any("receipt.code_page" in p and "single-byte code page" in p for p in found)


def test_network_printer_needs_a_host_and_a_sane_port():
    found = problems({"printers": [{"type": "network", "name": "front", "port": 70000}]})
    assert "posedge.toml: printers[0].host: required key is missing" in found
    assert any(p.startswith("posedge.toml: printers[0].port: found 70000") for p in found)


def test_unknown_printer_type_and_key_are_named():
    found = problems({"printers": [{"type": "netwrok"}, {"type": "file", "pth": "x"}]})
    assert any("printers[0].type" in p and "did you mean 'network'" in p for p in found)
    assert any("printers[1].pth" in p and "did you mean 'path'" in p for p in found)


def test_80mm_is_48_columns():
    assert validate_config({"receipt": {"width_mm": 80}}).receipt.columns == 48
