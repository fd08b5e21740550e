"""Who may use the admin routes (``POST /admin/reload``).

With ``SERVE_ADMIN_TOKEN`` set, callers must send ``Authorization: Bearer <token>``. Without one, the
routes are open only when the service listens on a loopback address (127.0.0.0/8, ::1, localhost), where
only the machine itself reaches them. On any other address (the Docker image binds 0.0.0.0) they are
off: they answer 403 and the start-up log says why. The service still starts: embeddings need no
token, and refusing to start would turn a missing secret into an outage.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from service.errors import ApiError
from service.settings import Settings

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def admin_enabled(settings: Settings) -> bool:
    return bool(settings.admin_token) or is_loopback(settings.host)


def log_admin_state(settings: Settings) -> None:
    if not admin_enabled(settings):
        log.warning("admin routes disabled: listening on %s without SERVE_ADMIN_TOKEN; POST /admin/reload "
                    "answers 403 (set SERVE_ADMIN_TOKEN to enable them)", settings.host)


def check_admin(settings: Settings, authorization: str) -> None:
    """Raise the right ApiError unless this caller may use the admin routes."""
    if settings.admin_token:
        if not hmac.compare_digest(authorization.encode(), f"Bearer {settings.admin_token}".encode()):
            raise ApiError(401, "admin token missing or wrong: send 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
        return
    if not is_loopback(settings.host):
        raise ApiError(403, f"admin routes are disabled: the service listens on {settings.host} and no "
                            "SERVE_ADMIN_TOKEN is set", type="admin_disabled")
