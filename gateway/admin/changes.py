"""Admin writes to the node's dynamic state, one way for every feature.

Discovery (targets, canaries), breakers (forced states), limits and security (keys, revocations)
all change dynamic state through the control plane (gateway/state/control.py), which reaches every
worker and, with Redis, every instance. The failures mean the same everywhere, so they answer the
same: no control plane in this process or Redis unreachable → 503 `state_unavailable` (nothing
changed), a value over the state's size bounds → 400 `state_limit`. Every change that took effect
is an `admin_change` line in the audit log (SPEC §7, GATEWAY_AUDIT_LOG), never with a secret.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.admin.api import AdminError

if TYPE_CHECKING:
    from gateway.admin.api import AdminRequest
    from gateway.admin.features import AdminContext


def control_of(ctx: AdminContext) -> Any:
    control = ctx.state.control
    if control is None:
        raise AdminError(503, "state_unavailable", "this process holds no control plane")
    return control


async def write_state(ctx: AdminContext, key: str, value: Any) -> None:
    """Put `value` at `key` (None deletes it); raises AdminError as the module says."""
    from gateway.state.control import StateLimit, StateUnavailable

    control = control_of(ctx)
    try:
        if value is None:
            await control.delete(key)
        else:
            await control.put(key, value)
    except StateUnavailable as exc:
        raise AdminError(503, "state_unavailable", str(exc)) from None
    except StateLimit as exc:
        raise AdminError(400, "state_limit", str(exc)) from None


def audit_change(req: AdminRequest | None, action: str, **details: Any) -> None:
    """One audit line for an admin change that took effect: what, on what, from where."""
    from gateway.security.audit import audit

    audit("admin_change", request_id=req.headers.get("x-request-id") if req is not None else None,
          client_ip=getattr(req, "client_ip", None), consumer="admin", action=action, details=details)
