"""Which network addresses a storage may be reached at.

A storage URL comes from a projet document anyone can edit, so by default the indexer only
talks to public addresses: loopback, private, link-local (cloud metadata at 169.254.169.254),
multicast and other special ranges are refused after DNS resolution, on every connection and
redirect. Networks listed in the allow-list (the ``allowed_networks`` setting) are let through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from indexer.errors import ForbiddenAddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_kind(address: IPAddress) -> str | None:
    """What makes an address non-public (``"a loopback address"``…), None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "a reserved address"
    return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Public addresses are allowed; non-public ones only inside `allowed` networks."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, networks: Iterable[str | IPNetwork]) -> AddressPolicy:
        """A policy allowing these networks (``"127.0.0.0/8"``, ``"10.1.2.3"``…) besides public ones."""
        return cls(tuple(ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n
                         for n in networks))

    def refusal(self, address: str) -> str | None:
        """Why `address` (an IP literal) is refused, None when it may be reached."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        kind = address_kind(ip)
        if kind is None:
            return None
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if any(ip in net or (mapped is not None and mapped in net) for net in self.allowed):
            return None
        return kind

    def check(self, host: str, address: str) -> None:
        """Raise `ForbiddenAddress` when `host`, resolved to `address`, may not be reached."""
        kind = self.refusal(address)
        if kind is None:
            return
        if host.strip("[]") == address:
            subject = f"{address} is {kind}"
        else:
            subject = f"{host} resolves to {address}, {kind}"
        raise ForbiddenAddress(f"{subject}: refused (allow it with the allowed_networks setting)")

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of `host`, every one checked; raises `ForbiddenAddress` or `OSError`."""
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            self.check(host, address)
        return addresses
