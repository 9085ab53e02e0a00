"""Authentication (signed tokens) and browser origin checks, sans I/O.

With a secret configured, every WebSocket connection and every REST call
except /healthz and /readyz needs a token: a JWT signed with HS256 (PyJWT,
decoded with an explicit algorithm list) whose claims carry ``tenant_id``,
``sub`` (the user) and ``exp``; ``role: "admin"`` makes an admin token.
Keys: ``FASTWS_JWT_SECRET`` for tokens without a ``kid``, and/or a JSON key
file ``{"kid": "secret", ...}`` (``FASTWS_JWT_KEYS_FILE``) for rotation:
a token with a ``kid`` must name a listed key. Refused: a missing or
malformed token, any algorithm but HS256 (``none`` included), a bad
signature, an unknown ``kid``, missing claims, ``exp`` past or ``nbf``
ahead, claims that are not valid ids.

Without any key the server runs in open development mode, as the seed did:
tenant and user come from the query string and headers, and the startup log
and the status API say so.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import jwt

from . import codes
from .channels import is_valid_id, is_valid_name
from .config import Settings
from .exceptions import ConfigError, ProtocolError
from .proxies import TrustedProxies

__all__ = ["Identity", "Authenticator", "OriginPolicy", "bearer_token", "log_auth_mode"]

ALGORITHMS = ["HS256"]
MIN_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class Identity:
    tenant_id: str
    user_id: str
    admin: bool
    #: unix time the token expires
    expires_at: float


class Authenticator:
    """Verifies tokens against the configured keys."""

    def __init__(self, default_key: bytes | None = None, keys: dict[str, bytes] | None = None, leeway: float = 0) -> None:
        self.default_key = default_key
        self.keys = keys or {}
        self.leeway = leeway
        for name, key in [("FASTWS_JWT_SECRET", default_key), *((f"key {kid!r}", k) for kid, k in self.keys.items())]:
            if key is not None and len(key) < MIN_KEY_BYTES:
                raise ConfigError(f"{name}: HS256 keys must be at least {MIN_KEY_BYTES} bytes")

    @classmethod
    def from_settings(cls, settings: Settings) -> "Authenticator | None":
        keys: dict[str, bytes] = {}
        if settings.jwt_keys_file:
            try:
                with open(settings.jwt_keys_file, "rb") as handle:
                    table = json.load(handle)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read the key file {settings.jwt_keys_file}: {exc}") from None
            if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
                raise ConfigError("the key file must be a JSON object of kid -> secret")
            keys = {str(kid): secret.encode() for kid, secret in table.items()}
        default = settings.jwt_secret.encode() if settings.jwt_secret else None
        if default is None and not keys:
            return None
        return cls(default, keys)

    def verify(self, token: str) -> Identity:
        """The identity a token proves; ProtocolError unauthorized or token_expired otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise ProtocolError(codes.UNAUTHORIZED, "malformed token") from None
        if header.get("alg") not in ALGORITHMS:
            raise ProtocolError(codes.UNAUTHORIZED, "token algorithm not allowed")
        kid = header.get("kid")
        if kid is None:
            key = self.default_key
        elif isinstance(kid, str):
            key = self.keys.get(kid)
        else:
            key = None
        if key is None:
            raise ProtocolError(codes.UNAUTHORIZED, "unknown signing key")
        try:
            claims = jwt.decode(
                token, key, algorithms=ALGORITHMS, leeway=self.leeway,
                options={"require": ["exp", "sub", "tenant_id"]},
            )
        except jwt.ExpiredSignatureError:
            raise ProtocolError(codes.TOKEN_EXPIRED) from None
        except jwt.InvalidTokenError as exc:
            raise ProtocolError(codes.UNAUTHORIZED, f"invalid token: {type(exc).__name__}") from None
        tenant_id, user_id = claims.get("tenant_id"), claims.get("sub")
        if not is_valid_id(tenant_id) or not is_valid_name(user_id):
            raise ProtocolError(codes.UNAUTHORIZED, "token claims are not valid tenant and user ids")
        return Identity(tenant_id, user_id, claims.get("role") == "admin", float(claims["exp"]))

    def mint(self, tenant_id: str, user_id: str, admin: bool = False, ttl: float = 3600,
             kid: str | None = None, now: float | None = None) -> str:
        """A token this authenticator accepts: signed with the default key, or with key ``kid``
        of the key file (what ``fastws token`` prints)."""
        if not is_valid_id(tenant_id) or not is_valid_name(user_id):
            raise ConfigError("the tenant must be a valid id and the user a valid name")
        if ttl <= 0:
            raise ConfigError("the lifetime must be positive")
        key = self.default_key if kid is None else self.keys.get(kid)
        if key is None:
            known = ", ".join(sorted(self.keys)) or "none"
            raise ConfigError("no default key (FASTWS_JWT_SECRET) configured" if kid is None
                              else f"no key {kid!r} in the key file (known: {known})")
        issued = int(time.time() if now is None else now)
        claims: dict[str, object] = {"tenant_id": tenant_id, "sub": user_id, "iat": issued, "exp": issued + int(ttl)}
        if admin:
            claims["role"] = "admin"
        return jwt.encode(claims, key, algorithm=ALGORITHMS[0], headers={"kid": kid} if kid is not None else None)

    @staticmethod
    def expired(identity: Identity, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= identity.expires_at


def bearer_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token of a request: ``Authorization: Bearer T``, else ``?token=T`` (browsers' WebSockets)."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _split_origin(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    return parts.scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[parts.scheme]


class OriginPolicy:
    """An allow-list of browser origins: exact scheme, host and port.

    A pattern's host may start with ``*.``: the ``*`` stands for exactly one
    whole label, so ``https://*.example.com`` allows ``https://app.example.com``
    but not ``https://example.com``, ``https://a.b.example.com`` or
    ``https://evilexample.com``. A missing port means the scheme's default.
    An empty list allows every origin; requests without an Origin header
    (not from a browser) are not checked.
    """

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = []
        for pattern in patterns:
            split = _split_origin(pattern.replace("*.", "wildcard.", 1))
            if split is None:
                raise ConfigError(f"invalid origin pattern {pattern!r}")
            scheme, host, port = split
            wildcard = pattern.split("://", 1)[-1].startswith("*.")
            self.patterns.append((scheme, host.removeprefix("wildcard.") if wildcard else host, port, wildcard))

    @classmethod
    def from_settings(cls, settings: Settings) -> "OriginPolicy":
        return cls([p.strip() for p in settings.allowed_origins.split(",") if p.strip()])

    def allows(self, origin: str | None) -> bool:
        if not self.patterns or origin is None:
            return True
        split = _split_origin(origin)
        if split is None:
            return False
        scheme, host, port = split
        for p_scheme, p_host, p_port, wildcard in self.patterns:
            if (scheme, port) != (p_scheme, p_port):
                continue
            if wildcard:
                label, _, rest = host.partition(".")
                if label and rest == p_host:
                    return True
            elif host == p_host:
                return True
        return False


def log_auth_mode(settings: Settings, log: logging.Logger) -> None:
    """Say at startup how requests are authenticated and who may run admin operations."""
    if Authenticator.from_settings(settings) is None:
        where = "from loopback peers only" if settings.open_admin == "loopback" else "from ANY peer (open_admin=any)"
        log.warning(
            "authentication: OPEN development mode (no FASTWS_JWT_SECRET or key file): "
            "tenant and user ids are trusted as sent; admin operations (flags, DELETE, detailed status) "
            "are accepted %s", where,
        )
    else:
        log.info("authentication: HS256 tokens required%s",
                 "; basic status is public (public_status)" if settings.public_status else "")
    proxies = TrustedProxies.parse(settings.trusted_proxies)
    if proxies.networks:
        log.info("X-Forwarded-For believed from: %s", ", ".join(map(str, proxies.networks)))
