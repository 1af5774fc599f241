"""Configuration: the example documents every key, errors name file, key, found and allowed."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from posedge.agent.config import Config, ConfigError, load_config, validate_config
from posedge.drivers.registry import PRINTERS, SCANNERS

EXAMPLE = Path(__file__).parents[1] / "config.example.toml"


def enabled_example() -> str:
    """The example with every '#key = value' example line switched on."""
    return re.sub(r"(?m)^#(?=\S)", "", EXAMPLE.read_text(encoding="utf-8"))


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= model_keys(annotation, f"{prefix}{name}.")
    return keys


def toml_keys(data: Any, prefix: str = "") -> set[str]:
    keys = set()
    if isinstance(data, dict):
        for name, value in data.items():
            keys.add(prefix + name)
            if isinstance(value, dict) and not prefix.endswith("public_keys."):
                keys |= toml_keys(value, f"{prefix}{name}.")
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                for item in value:
                    keys |= {f"{prefix}{name}[{item.get('type')}].{k}" for k in item}
    return keys


def test_example_config_is_valid_as_shipped() -> None:
    load_config(EXAMPLE)


def test_example_config_is_valid_with_every_example_enabled() -> None:
    validate_config(tomllib.loads(enabled_example()), str(EXAMPLE))


def test_example_documents_every_config_key() -> None:
    documented = toml_keys(tomllib.loads(enabled_example()))
    expected = model_keys(Config) - {"scanners", "printers"}
    missing = sorted(expected - documented)
    assert not missing, f"config.example.toml does not show: {missing}"


@pytest.mark.parametrize("table, registry", [("scanners", SCANNERS), ("printers", PRINTERS)])
def test_example_documents_every_driver_and_its_keys(table: str, registry) -> None:
    documented = toml_keys(tomllib.loads(enabled_example()))
    for type_name in registry.types():
        model = registry.config_model(type_name)
        missing = sorted(k for k in model.model_fields if f"{table}[{type_name}].{k}" not in documented)
        assert not missing, f"config.example.toml: [[{table}]] type {type_name!r} does not show {missing}"


def test_embedded_defaults_are_valid_and_offline() -> None:
    config = load_config(None)
    assert config.api.listen == "127.0.0.1:8765"
    assert config.storage.path == Path("var/posedge.db")
    assert [s.type for s in config.scanners] == ["stdin"]


def problems(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(issue) for issue in caught.value.issues]


def test_unknown_key_gets_did_you_mean_with_file_and_dotted_key(tmp_path: Path) -> None:
    [problem] = problems('[api]\nlisen = "127.0.0.1:1"\n', tmp_path)
    assert problem.startswith(f"{tmp_path / 'bad.toml'}: api.lisen: unknown key; did you mean 'listen'?")
    assert "allowed keys: allowed_hosts, body_timeout_s, cors_origins, header_timeout_s" in problem


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    found = problems('[store]\nid = "a b"\n[mqtt]\nurl = "http://x"\n[[scanners]]\ntype = "seriall"\n', tmp_path)
    assert len(found) == 3
    assert any("store.id: found 'a b'" in p for p in found)
    assert any("mqtt.url: found 'http://x': scheme must be mqtt or mqtts" in p for p in found)
    assert any("scanners[0].type: found 'seriall'" in p and "allowed:" in p for p in found)


def test_wrong_type_names_found_and_expected(tmp_path: Path) -> None:
    [problem] = problems('[storage]\ngroup_commit_max = "many"\n', tmp_path)
    assert "storage.group_commit_max: found 'many'" in problem and "integer" in problem


def test_not_toml_is_reported_with_position(tmp_path: Path) -> None:
    [problem] = problems("[store\n", tmp_path)
    assert "not valid TOML" in problem and "line 1" in problem


def test_secret_from_environment_and_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("from-file\n")
    config = validate_config({"mqtt": {"password_file": str(secret)}})
    assert config.mqtt.password.get_secret_value() == "from-file"
    monkeypatch.setenv("POSEDGE_MQTT_PASSWORD", "from-env")
    assert validate_config({"mqtt": {"password_file": str(secret)}}).mqtt.password.get_secret_value() == "from-env"
    monkeypatch.setenv("POSEDGE_API_TOKEN", "t" * 32)
    assert validate_config({}).api.token.get_secret_value() == "t" * 32
    assert "from-env" not in repr(validate_config({}).mqtt)


def test_unreadable_secret_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({"mqtt": {"password_file": str(tmp_path / "missing")}}, "x.toml")
    assert "x.toml: mqtt: " in str(caught.value) and "password_file" in str(caught.value)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posedge", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = run_cli("check-config", str(EXAMPLE))
    assert (good.returncode, good.stdout.strip()) == (0, f"{EXAMPLE}: valid")
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text('[api]\nlisten = "nowhere"\n')
    bad = run_cli("check-config", str(bad_file))
    assert bad.returncode == 2
    assert f"{bad_file}: api.listen: found 'nowhere'" in bad.stderr
    missing = run_cli("check-config", str(tmp_path / "none.toml"))
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_run_refuses_an_invalid_config(tmp_path: Path) -> None:
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text('[storage]\npaht = "x.db"\n')
    result = run_cli("run", "--config", str(bad_file), cwd=tmp_path)
    assert result.returncode == 2
    assert "storage.paht: unknown key; did you mean 'path'?" in result.stderr
    assert not (tmp_path / "var").exists()


def test_mqtt_protocol_is_5_or_3_1_1_and_says_so(tmp_path: Path) -> None:
    assert validate_config({"mqtt": {"protocol": "3.1.1"}}).mqtt.protocol == "3.1.1"
    assert validate_config({}).mqtt.protocol == "5"
    for wrong in ('"3"', '"v5"', "5"):
        [problem] = problems(f"[mqtt]\nprotocol = {wrong}\n", tmp_path)
        assert "mqtt.protocol: found" in problem and "'5' or '3.1.1'" in problem, problem
