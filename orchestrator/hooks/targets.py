"""Which webhook targets may be reached: the URL's host is resolved and every address
it resolves to is checked, so a name pointing at the inside is refused like the
address itself. Private, loopback, link-local (cloud metadata lives there), multicast,
reserved and unspecified addresses are refused unless ``WEBHOOK_ALLOW_PRIVATE`` is set.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from orchestrator.errors import InputError


def _refused(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for what in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{what}"):
            return what.replace("_", "-")
    return None


def check_target(url: str, allow_private: bool, field: str = "url") -> None:
    """InputError naming ``field`` when the URL's host does not resolve, or resolves to
    an address that may not be reached."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        found = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise InputError(field, "its host does not resolve") from None
    if allow_private:
        return
    for *_, sockaddr in found:
        why = _refused(str(sockaddr[0]))
        if why is not None:
            raise InputError(field, f"its host resolves to a {why} address ({sockaddr[0]})")
