"""The client's address: the TCP peer, or behind trusted proxies the nearest untrusted hop of
`X-Forwarded-For`. Standard library only, no I/O."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Hops of X-Forwarded-For looked at, from the right; a longer chain is a client's invention.
MAX_HOPS = 16
#: The key of a request whose peer is unknown (a closed transport, a Unix socket).
UNKNOWN = "?"


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """`10.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`: ValueError naming a bad entry."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"CHAT_TRUSTED_PROXIES: {entry!r} is not an address or CIDR") from None
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """An address as a proxy writes it (`[v6]` too), IPv4-mapped IPv6 as plain IPv4."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """Whose `X-Forwarded-For` is believed; with none (the default) it never is."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks = parse_networks(entries)

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def client_address(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> str:
        """The address per-address limits key on.

        `forwarded_for` holds the request's X-Forwarded-For header values in order. Each trusted
        proxy appends the address it got the request from, so reading from the right, the first
        hop that is not a trusted proxy is the client; anything left of it may be forged.
        """
        if not peer:
            return UNKNOWN
        current = parse_address(peer)
        if current is None or not self.networks or not self.trusts(current):
            return peer if current is None else str(current)
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops[-MAX_HOPS:]):
            address = parse_address(hop)
            if address is None:
                break  # a trusted proxy passed on garbage: the last address we believe is it
            current = address
            if not self.trusts(address):
                break
        return str(current)
