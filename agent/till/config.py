"""Config tables of the till loop: `[hq]` keys, `[members]`, `[points]`, `[coupons]`.

Each is one field on `Config` (agent/config.py). Every key is documented in config.example.toml.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from posedge.agent.config import ConfigModel, resolve_secrets
from posedge.agent.domain.pricing import PointsRules, StackingRules
from posedge.agent.till.codes import KID, public_key_bytes


class HqConfig(ConfigModel):
    public_keys: dict[str, str] = Field(default_factory=dict,
                                        description="kid -> base64url raw 32-byte Ed25519 public key of HQ")
    retired_kids: list[str] = Field(default_factory=list, description="kids refused even if still listed")
    clock_skew_s: int = Field(60, ge=0, le=600, description="tolerance on exp/nbf for a store clock that is off")
    config_keys: dict[str, str] = Field(
        default_factory=dict,
        description="kid -> base64url raw Ed25519 public key of HQ's config signing keys (not the code keys)")

    @field_validator("public_keys", "config_keys")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        for kid, key in value.items():
            if not re.match(KID, kid):
                raise ValueError(f"kid {kid!r} must be 1-64 of A-Z a-z 0-9 . _ : -")
            try:
                public_key_bytes(key)  # the same checks as load_public_key, without importing cryptography
            except ValueError as exc:
                raise ValueError(f"key of kid {kid!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _config_keys_apart(self) -> "HqConfig":
        # A code key that could also sign config would let anyone holding a minting key reconfigure stores.
        shared = sorted(kid for kid, key in self.config_keys.items()
                        if key.rstrip("=") in {k.rstrip("=") for k in self.public_keys.values()})
        if shared:
            raise ValueError(f"config_keys {shared} are also in public_keys; config keys must be different keys "
                             "from the code-signing keys (posedge-hq keygen makes a new one)")
        return self


class MembersConfig(ConfigModel):
    code_max_age_s: int = Field(300, ge=10, le=86400, description="oldest dynamic member code accepted (from iat)")
    phone_hash_key: SecretStr | None = Field(
        None, description="key of the phone hash shared with HQ; or env POSEDGE_MEMBERS_PHONE_HASH_KEY, or *_file")
    phone_hash_key_file: str | None = Field(None, description="file holding phone_hash_key")

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any) -> Any:
        return resolve_secrets("members", ("phone_hash_key",), data)


class PointsConfig(ConfigModel):
    earn_per_yuan: int = Field(1, ge=0, le=1000, description="points per yuan paid, for tiers not listed")
    tiers: dict[str, int] = Field(default_factory=dict, description="tier -> points per yuan paid")
    excluded_skus: list[str] = Field(default_factory=list, description="SKUs that earn no points")
    redeem_unit_points: int = Field(100, ge=1, le=1_000_000, description="points are spent in steps of this many")
    redeem_unit_fen: int = Field(100, ge=1, le=1_000_000, description="fen one step of points takes off")
    redeem_max_percent: int = Field(100, ge=0, le=100, description="most of a total (after coupons) points may pay")
    claim_days: int = Field(30, ge=1, le=365, description="how long a receipt's claim code can be claimed")

    def rules(self) -> PointsRules:
        return PointsRules(self.earn_per_yuan, dict(self.tiers), frozenset(self.excluded_skus),
                           self.redeem_unit_points, self.redeem_unit_fen, self.redeem_max_percent)


class OfflineCouponPolicy(ConfigModel):
    accept: bool = Field(True, description="accept coupons while HQ cannot confirm them (within the limits below)")
    max_value_fen: int = Field(5000, ge=0, description="largest discount one coupon may give offline")
    max_per_day_per_till: int = Field(50, ge=0, description="offline-accepted coupons per business day and till")
    max_hours_since_hq: int = Field(
        72, ge=0, description="accept offline only this long after HQ was last heard; 0: no limit"
    )
    beyond: Literal["override", "refuse"] = Field(
        "override", description="past a limit: 'override' needs a manager (who, why) on the sale; 'refuse'")


class CouponsConfig(ConfigModel):
    max_per_sale: int = Field(1, ge=0, le=20, description="coupons one sale may use")
    same_campaign: bool = Field(False, description="may two coupons of one campaign go on one sale")
    return_on_refund: Literal["never", "full_refund"] = Field(
        "full_refund", description="'full_refund': a fully refunded sale gives its coupons back; 'never'")
    confirm_timeout_ms: int = Field(800, ge=50, le=10000, description="wait for HQ's online confirmation this long")
    offline: OfflineCouponPolicy = Field(default_factory=OfflineCouponPolicy)

    def stacking(self) -> StackingRules:
        return StackingRules(self.max_per_sale, self.same_campaign)
