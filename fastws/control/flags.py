"""Feature flags: websocket_v2 (instant rollback to the legacy system), per tenant and by rollout.

A tenant is served by fastws when:

1. its per-tenant override says so (on or off), else
2. ``websocket_v2`` is on and the tenant's stable bucket (crc32 of the tenant
   id, mod 100) is below ``rollout_percent``.

``existing`` says what happens to connections already open when a tenant
leaves v2: ``keep`` them, or ``close`` them with close code 4002 naming the
legacy URL.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Any

from .. import codes
from ..channels import is_valid_id
from ..exceptions import ProtocolError

__all__ = ["Flags", "v2_enabled_for", "tenant_bucket", "EXISTING_POLICIES"]

EXISTING_POLICIES = ("keep", "close")


def tenant_bucket(tenant_id: str) -> int:
    """0-99, the same for a tenant on every worker, host and restart."""
    return zlib.crc32(tenant_id.encode()) % 100


@dataclass(frozen=True, slots=True)
class Flags:
    websocket_v2: bool = True
    rollout_percent: int = 100
    existing: str = "keep"
    #: tenant -> True (always v2) or False (always legacy)
    overrides: dict[str, bool] = field(default_factory=dict)
    #: "default", "config" (file or flags) or "api" (PUT /api/websocket, fastws flag): api wins until changed
    source: str = "default"
    #: bumped on every change; workers compare it to notice one
    generation: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "websocket_v2": self.websocket_v2,
            "rollout_percent": self.rollout_percent,
            "existing": self.existing,
            "tenants": {tenant: ("on" if on else "off") for tenant, on in sorted(self.overrides.items())},
            "source": self.source,
        }

    def updated(self, body: object, max_overrides: int) -> "Flags":
        """A copy with the changes of a PUT body's ``flags`` object applied (validated)."""
        if type(body) is not dict or not body:
            raise ProtocolError(codes.INVALID_FIELD, "'flags' must be a non-empty object")
        changes: dict[str, Any] = {}
        for key, value in body.items():
            if key == "websocket_v2":
                changes["websocket_v2"] = _on_off(value, key)
            elif key == "rollout_percent":
                if type(value) is not int or not 0 <= value <= 100:
                    raise ProtocolError(codes.INVALID_FIELD, "'rollout_percent' must be an integer from 0 to 100")
                changes["rollout_percent"] = value
            elif key == "existing":
                if value not in EXISTING_POLICIES:
                    raise ProtocolError(codes.INVALID_FIELD, "'existing' must be 'keep' or 'close'")
                changes["existing"] = value
            elif key == "tenants":
                if type(value) is not dict:
                    raise ProtocolError(codes.INVALID_FIELD, "'tenants' must map tenant ids to on, off or null")
                overrides = dict(changes.get("overrides", self.overrides))
                for tenant, state in value.items():
                    if not is_valid_id(tenant):
                        raise ProtocolError(codes.INVALID_TENANT_ID)
                    if state is None or state == "default":
                        overrides.pop(tenant, None)
                    else:
                        overrides[tenant] = _on_off(state, f"tenants.{tenant}")
                if len(overrides) > max_overrides:
                    raise ProtocolError(codes.INVALID_FIELD, f"at most {max_overrides} tenant overrides")
                changes["overrides"] = overrides
            else:
                raise ProtocolError(codes.INVALID_FIELD, f"unknown flag {key!r:.40}")
        return replace(self, **changes)


def _on_off(value: object, name: str) -> bool:
    if type(value) is bool:
        return value
    if value in ("on", "off"):
        return value == "on"
    raise ProtocolError(codes.INVALID_FIELD, f"'{name}' must be true, false, 'on' or 'off'")


def v2_enabled_for(flags: Flags, tenant_id: str) -> bool:
    """Whether ``tenant_id`` is served by fastws (True) or sent to the legacy system (False)."""
    override = flags.overrides.get(tenant_id)
    if override is not None:
        return override
    if not flags.websocket_v2:
        return False
    return flags.rollout_percent >= 100 or tenant_bucket(tenant_id) < flags.rollout_percent
