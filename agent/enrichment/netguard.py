"""What a website fetch may reach: allowlisted hosts, at public addresses only.

``Allowlist`` matches a host against registrable domains.  ``address_refusal``
names why an address may not be fetched from (loopback, private, link-local,
multicast, reserved, unspecified, not globally routable), looking through
IPv4 addresses embedded in IPv6 ones.  ``PinnedBackend`` is the httpcore
network backend the fetcher's connections go through: it resolves the host
once, refuses the whole answer if any address in it is refused, and connects
to the addresses it checked.  The name is never looked up a second time, so
an answer cannot change between the check and the connection (DNS
rebinding), and TLS still verifies the certificate against the host name,
which httpcore passes to ``start_tls`` on its own.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.errors import AgentError, ConfigurationError

__all__ = ["FetchError", "FetchRefused", "Allowlist", "address_refusal", "system_resolver", "PinnedBackend",
           "Resolver", "IPAddress"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses it resolves to (text), in the resolver's order
Resolver = Callable[[str, int], list[str]]

_LABELS = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchError(AgentError):
    """A website fetch that gave no text.  ``code`` is stable (envelope error items use it);
    the message names the host, never the query string or a body."""

    code = "fetch_failed"

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class FetchRefused(FetchError):
    """Refused by policy (scheme, host, address, content type, redirects), not by the network."""


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


class Allowlist:
    """Hosts a fetch may reach: each entry is a registrable domain (``acme.example`` also allows
    ``www.acme.example``) or an exact IP address."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        names: list[str] = []
        addresses: list[IPAddress] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".").removeprefix("*.").lstrip(".")
            if not entry:
                continue
            ip = _ip(entry)
            if ip is not None:
                addresses.append(ip)
                continue
            try:
                entry = entry.encode("idna").decode("ascii")
            except UnicodeError:
                raise ConfigurationError(f"setting enrich_fetch_allowlist: {raw.strip()!r} is not a domain name") \
                    from None
            if not _LABELS.fullmatch(entry) or entry.rpartition(".")[2].isdigit():
                raise ConfigurationError(f"setting enrich_fetch_allowlist: {raw.strip()!r} is not a domain name "
                                         "or an IP address (give the domain alone: no scheme, port or path)")
            names.append(entry)
        self.names: tuple[str, ...] = tuple(dict.fromkeys(names))
        self.addresses: tuple[IPAddress, ...] = tuple(dict.fromkeys(addresses))

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        """An allowlist from comma-separated entries (the ``enrich_fetch_allowlist`` setting)."""
        return cls(text.split(","))

    def __bool__(self) -> bool:
        return bool(self.names or self.addresses)

    def __repr__(self) -> str:
        return f"Allowlist({[*self.names, *map(str, self.addresses)]!r})"

    def allows(self, host: str) -> bool:
        """Whether ``host`` (a name in its ASCII form, or an IP literal) is on the list."""
        host = host.strip().lower().rstrip(".")
        ip = _ip(host)
        if ip is not None:
            return ip in self.addresses
        if host.rpartition(".")[2].isdigit():  # "1.2.3" is no name: some resolvers read it as an address
            return False
        return any(host == name or host.endswith("." + name) for name in self.names)


def address_refusal(ip: IPAddress) -> str | None:
    """Why a fetch may not connect to ``ip`` ("loopback", "private", ...), or None for a public
    unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address carried inside an IPv6 one reaches that IPv4 host: judge it too.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            why = address_refusal(embedded)
            if why is not None:
                return why
    checks = (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
              ("multicast", ip.is_multicast), ("reserved", ip.is_reserved), ("private", ip.is_private))
    for name, hit in checks:
        if hit:
            return name
    return None if ip.is_global else "not globally routable"


def system_resolver(timeout: float | None = None) -> Resolver:
    """The system's resolver, given at most ``timeout`` seconds per lookup.

    ``getaddrinfo`` takes no timeout, so the lookup runs in a daemon thread
    that is left to finish on its own when the wait is over.
    """

    def resolve(host: str, port: int) -> list[str]:
        box: dict[str, Any] = {}

        def lookup() -> None:
            try:
                box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                box["error"] = exc

        worker = threading.Thread(target=lookup, name="fetch-dns", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            raise FetchError("dns_timeout", f"{host}: no DNS answer within {timeout:g} s")
        if "error" in box:
            raise FetchError("dns_failed", f"{host}: cannot be resolved ({box['error'].__class__.__name__})")
        return list(dict.fromkeys(str(info[4][0]) for info in box["infos"]))

    return resolve


class PinnedBackend:
    """An httpcore network backend that connects only to addresses it resolved and checked.

    ``allow_private``: False refuses every non-public address; True allows all
    (tests that reach a server on 127.0.0.1); a tuple of networks allows those.
    """

    def __init__(self, *, resolver: Resolver, allow_private: bool | tuple[Any, ...] = False,
                 deadline: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        import httpcore2

        self._inner = httpcore2.SyncBackend()
        self._connect_error = httpcore2.ConnectError
        self._timeout_error = httpcore2.ReadTimeout
        self.resolver = resolver
        self.allow_private = allow_private
        # Every wait on a connection (TLS handshake, headers, body) ends by this clock time at the
        # latest: a server dribbling a byte at a time cannot hold a fetch past its total timeout.
        self.deadline = deadline
        self.clock = clock

    def clamp(self, timeout: float | None) -> float | None:
        if self.deadline is None:
            return timeout
        left = self.deadline - self.clock()
        if left <= 0:
            raise self._timeout_error("the fetch's total time ran out")
        return left if timeout is None else min(timeout, left)

    def checked_addresses(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` to connect to, all of them allowed; else ``FetchRefused``."""
        literal = _ip(host)
        if literal is not None:
            found: list[IPAddress] = [literal]
        else:
            found = [ip for ip in map(_ip, self.resolver(host, port)) if ip is not None]
            if not found:
                raise FetchError("dns_failed", f"{host}: the name has no address")
        if self.allow_private is not True:
            for ip in found:
                why = address_refusal(ip)
                if why is None or self._allowed_private(ip):
                    continue
                where = f"{host} is" if literal is not None else f"{host} resolves to"
                raise FetchRefused("private_address", f"{where} a {why} address ({ip}); only public addresses "
                                                      "are fetched")
        return [str(ip) for ip in found]

    def _allowed_private(self, ip: IPAddress) -> bool:
        networks = self.allow_private if isinstance(self.allow_private, tuple) else ()
        return any(ip.version == net.version and ip in net for net in networks)

    # The NetworkBackend protocol of httpcore (duck-typed: this module imports without it).

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> Any:
        last: Exception | None = None
        for address in self.checked_addresses(host, port):
            try:
                stream = self._inner.connect_tcp(address, port, timeout=self.clamp(timeout),
                                                 local_address=local_address, socket_options=socket_options)
                return stream if self.deadline is None else _DeadlineStream(stream, self)
            except self._connect_error as exc:  # refused or unreachable: the next address may answer
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> Any:
        raise FetchRefused("invalid_url", "unix sockets are never fetched from")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineStream:
    """A connection whose every wait is cut to what is left of the fetch's total time."""

    def __init__(self, inner: Any, backend: PinnedBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout=self._backend.clamp(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout=self._backend.clamp(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        upgraded = self._inner.start_tls(ssl_context, server_hostname=server_hostname,
                                         timeout=self._backend.clamp(timeout))
        return _DeadlineStream(upgraded, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
