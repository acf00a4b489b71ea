"""Which addresses are our own load balancers (``proxy.trusted_cidrs``), and the client
behind them from ``X-Forwarded-For``.

Only a trusted proxy may tell us who the client is (a PROXY protocol header, an
``X-Forwarded-For`` header); from anyone else such claims are refused or ignored. A
trusted proxy's own address is never the client's: the access policy does not throttle
it (``core/access.py``), since every device behind it would share the block. Pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: The longest X-Forwarded-For chain looked at (longer: refused as malformed).
MAX_FORWARDED_HOPS = 32


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address (IPv4-mapped IPv6 as IPv4); ValueError otherwise."""
    addr = ipaddress.ip_address(text.strip())
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class TrustedProxies:
    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        networks: list[Network] = []
        for position, text in enumerate(cidrs, start=1):
            try:
                networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ValueError(f"entry {position} is not an IP network (CIDR)") from None
        self._networks = tuple(networks)
        #: Positive and negative answers: a node sees few distinct proxies and many clients,
        #: so only a bounded number of answers is kept.
        self._seen: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, address: object) -> bool:
        if not self._networks or not isinstance(address, str):
            return False
        known = self._seen.get(address)
        if known is not None:
            return known
        try:
            addr = parse_address(address)
        except ValueError:
            return False
        trusted = any(addr in net for net in self._networks)
        if len(self._seen) >= 4096:
            self._seen.clear()
        self._seen[address] = trusted
        return trusted

    def client_from_forwarded_for(self, peer: str, values: list[str]) -> str:
        """The client behind ``peer`` according to its ``X-Forwarded-For`` header(s).

        Only when ``peer`` is trusted: walk the chain from the right (the hop nearest to
        us) past every trusted proxy; the first other address is the client. All trusted:
        the leftmost. ValueError for a malformed chain (the caller answers 400).
        """
        if peer not in self or not values:
            return peer
        hops = [h.strip() for value in values for h in value.split(",")]
        if len(hops) > MAX_FORWARDED_HOPS:
            raise ValueError("X-Forwarded-For has too many hops")
        parsed = [str(parse_address(h)) for h in hops]  # ValueError on a malformed entry
        for hop in reversed(parsed):
            if hop not in self:
                return hop
        return parsed[0]
