"""Who the client is: the peer address, or, behind a trusted reverse proxy, the address it forwarded.

``X-Forwarded-For`` is honoured only when the peer is one of the configured
trusted proxies (``trusted_proxies``: addresses or networks, comma-separated);
then the client is the rightmost address of the header that is not itself a
trusted proxy (each proxy appends the address it got the request from, so
only the hops added by trusted proxies can be believed). From any other
peer the header is ignored: anyone can write it. Per-address limits, the
loopback rule for admin operations in open mode, and logs use the result.
Sans-I/O.
"""

from __future__ import annotations

import ipaddress

from .exceptions import ConfigError

__all__ = ["TrustedProxies", "is_loopback"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip("[]")
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def is_loopback(text: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address."""
    address = _address(text)
    return address is not None and address.is_loopback


class TrustedProxies:
    """The configured trusted proxies, and the client address of a request."""

    __slots__ = ("networks",)

    def __init__(self, networks: list[Network]) -> None:
        self.networks = networks

    @classmethod
    def parse(cls, spec: str) -> "TrustedProxies":
        networks: list[Network] = []
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(f"trusted_proxies: {item!r} is not an address or network") from None
        return cls(networks)

    def trusts(self, text: str) -> bool:
        address = _address(text)
        return address is not None and any(address in network for network in self.networks)

    def forwarded_https(self, peer: str, forwarded_proto: str | None) -> bool:
        """A trusted proxy says the client's request came over https (``X-Forwarded-Proto``)."""
        if not forwarded_proto or not self.networks or not self.trusts(peer):
            return False
        return forwarded_proto.split(",")[0].strip().lower() == "https"

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: the peer's, unless the peer is trusted and forwarded one."""
        if not forwarded_for or not self.networks or not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        for hop in reversed(hops):
            if _address(hop) is None:
                return peer  # a malformed header: believe nothing of it
            if not self.trusts(hop):
                return str(_address(hop))
        return str(_address(hops[0]))
