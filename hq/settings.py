"""HQ's own config file (`posedge-hq serve --config hq.toml`, docs/hq-api.md): the tenant the API serves, the
signing key for member codes and coupons, and the tier rules. Validated like the agent's: unknown keys are
refused, errors name the dotted key and what was expected."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ID = r"^[A-Za-z0-9._:-]{1,64}$"
SEGMENT = r"^[A-Za-z0-9_-]{1,64}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierLevel(Strict):
    name: str = Field(pattern=ID, description="the tier's name, as stores and member codes carry it")
    min_spend_fen: int = Field(ge=0, le=2**53, description="spend over the window (fen) from which it holds")


class Tiers(Strict):
    window_days: int = Field(365, ge=1, le=3660, description="days of spend (both channels) the tier counts")
    levels: list[TierLevel] = Field(default_factory=lambda: [TierLevel(name="basic", min_spend_fen=0)],
                                    min_length=1, max_length=32)

    @model_validator(mode="after")
    def _ordered(self) -> "Tiers":
        spends = [level.min_spend_fen for level in self.levels]
        if spends[0] != 0 or spends != sorted(set(spends)):
            raise ValueError("levels must start at min_spend_fen = 0 and rise strictly")
        if len({level.name for level in self.levels}) != len(self.levels):
            raise ValueError("levels must have distinct names")
        return self

    def tier_for(self, spend_fen: int) -> str:
        return [level.name for level in self.levels if level.min_spend_fen <= spend_fen][-1] \
            if spend_fen >= 0 else self.levels[0].name


class Signing(Strict):
    key_file: Path = Field(description="HQ's Ed25519 private key (posedge-hq keygen)")
    kid: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$", description="its key id, as stores list it")
    member_code_ttl_s: int = Field(120, ge=10, le=3600, description="life of a member code the API mints")


class HqConfig(Strict):
    tenant: str = Field(pattern=SEGMENT, description="the chain (tenant id) the mini-program API serves")
    signing: Signing | None = Field(None, description="without it, member codes and coupons cannot be issued")
    tiers: Tiers = Field(default_factory=Tiers)


class ConfigError(Exception):
    """The file cannot be read or does not validate; the message names the key."""


def load_config(path: Path) -> HqConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None
    try:
        return HqConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
