"""Website text fetcher: the visible text of an allowlisted page, fetched defensively.

Off unless the ``enrich_fetch`` setting turns it on (the enricher checks it).
A fetch:

- takes ``http`` and ``https`` URLs without credentials, on hosts of the
  allowlist only (``enrich_fetch_allowlist``);
- connects through ``PinnedBackend``: the host is resolved once, any
  loopback, private, link-local, multicast, reserved or unspecified address
  in the answer refuses the fetch, and the connection goes to the checked
  address (no second lookup, no DNS-rebinding window); no proxy is used;
- follows at most ``max_redirects`` redirects itself, each hop checked again;
- waits at most ``connect_timeout`` for a DNS answer and to connect, and
  ``timeout`` for each read, and gives the whole fetch ``total_timeout``
  (checked between steps: a step under way when it runs out ends within its
  own timeout);
- reads at most ``max_bytes`` of the body and then stops reading: a longer
  page is *truncated* (its first ``max_bytes`` are used and
  ``FetchResult.truncated`` says so), not refused, because the start of a
  company's page is what the enricher wants;
- accepts ``text/html`` and ``text/plain`` only, asks for no compression and
  refuses a compressed body (no decompression bombs);
- turns HTML into visible text with ``html.parser`` (scripts, styles and
  similar elements skipped, whitespace collapsed), at most ``max_chars``.

Every failure is a ``FetchError`` (``FetchRefused`` for policy refusals)
with a stable ``code``; errors of httpx and httpcore are translated here and
not chained, so no stack of their internals reaches a log or an envelope.
Needs the ``httpx2`` package (the ``llm`` extra installs it).
"""

from __future__ import annotations

import codecs
import hashlib
import ipaddress
import re
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

from agent.enrichment.netguard import Allowlist, FetchError, FetchRefused, PinnedBackend, Resolver, system_resolver
from agent.errors import ConfigurationError

if TYPE_CHECKING:
    from agent.settings import Settings

try:
    import httpcore2 as httpcore
    import httpx2 as httpx
except ImportError as exc:  # pragma: no cover - the package is installed with the llm extra
    raise ConfigurationError("the website fetcher needs the httpx2 package: pip install httpx2 "
                             "(or pip install 'agent-sdr[llm]')") from exc

__all__ = ["WebsiteFetcher", "FetchResult", "visible_text", "USER_AGENT"]

USER_AGENT = "agent-sdr-enricher/0.1 (+company website facts)"
TEXT_TYPES = frozenset({"text/html", "text/plain"})
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-z0-9_.:-]+)""", re.IGNORECASE)
_TITLE_CHARS = 300


@dataclass(frozen=True)
class FetchResult:
    """A fetched page: where it ended up, and its visible text."""

    url: str
    status: int
    content_type: str
    title: str | None
    text: str
    sha256: str  # of ``text`` (UTF-8)
    bytes_read: int
    truncated: bool  # the body was cut at max_bytes, or the text at max_chars
    redirects: tuple[str, ...] = ()


class WebsiteFetcher:
    """Fetches the visible text of pages on allowlisted hosts at public addresses.

    ``allow_private_networks`` is for tests and deliberate deployments only,
    and is never read from settings: True lets every address through (a test
    server on 127.0.0.1); an iterable of networks (``"127.0.0.1/32"``) lets
    those through and no others.  ``resolver`` replaces the system's DNS
    (``host, port -> [address, ...]``); ``clock`` replaces ``time.monotonic``.
    """

    def __init__(self, allowlist: Allowlist | Iterable[str] | str, *, timeout: float = 5.0,
                 connect_timeout: float | None = None, total_timeout: float | None = None,
                 max_bytes: int = 500_000, max_chars: int = 20_000, max_redirects: int = 3,
                 allow_private_networks: bool | Iterable[str] = False, resolver: Resolver | None = None,
                 ssl_context: ssl.SSLContext | None = None, clock: Callable[[], float] = time.monotonic,
                 user_agent: str = USER_AGENT) -> None:
        if isinstance(allowlist, str):
            allowlist = Allowlist.parse(allowlist)
        self.allowlist = allowlist if isinstance(allowlist, Allowlist) else Allowlist(allowlist)
        if timeout <= 0 or max_bytes < 1 or max_chars < 1 or max_redirects < 0:
            raise ConfigurationError("website fetcher: timeout, max_bytes and max_chars must be positive, "
                                     "max_redirects not negative")
        self.timeout = timeout
        self.connect_timeout = connect_timeout or timeout
        self.total_timeout = total_timeout or 3 * timeout
        self.max_bytes = max_bytes
        self.max_chars = max_chars
        self.max_redirects = max_redirects
        if isinstance(allow_private_networks, bool):
            self.allow_private: bool | tuple[Any, ...] = allow_private_networks
        else:
            networks = [allow_private_networks] if isinstance(allow_private_networks, str) else allow_private_networks
            try:
                self.allow_private = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
            except ValueError as exc:
                raise ConfigurationError(f"website fetcher: allow_private_networks: {exc}") from None
        self.resolver = resolver or system_resolver(self.connect_timeout)
        self.clock = clock
        self.user_agent = user_agent
        self._ssl_context = ssl_context

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> WebsiteFetcher:
        """A fetcher configured by the ``enrich_fetch_*`` settings (``options`` override)."""
        options.setdefault("timeout", settings.enrich_fetch_timeout)
        options.setdefault("max_bytes", settings.enrich_fetch_max_bytes)
        return cls(Allowlist.parse(settings.enrich_fetch_allowlist), **options)

    def allows(self, host: str) -> bool:
        """Whether ``host`` is on the allowlist (its addresses are checked when connecting)."""
        return self.allowlist.allows(host)

    def fetch(self, url: str) -> FetchResult:
        """The page at ``url`` as visible text; ``FetchError`` (or ``FetchRefused``) if it cannot be had."""
        try:
            return self._fetch(url)
        except FetchError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a hostile page provokes fails this fetch alone
            raise FetchError("fetch_failed", f"{_url_host(url)}: {exc.__class__.__name__}") from None

    def _fetch(self, url: str) -> FetchResult:
        deadline = self.clock() + self.total_timeout
        current = self._checked_url(url)
        redirects: list[str] = []
        with self._client(deadline) as client:
            for _ in range(self.max_redirects + 1):
                response = self._send(client, current, deadline)
                try:
                    if not response.is_redirect:
                        return self._read(response, deadline, tuple(redirects))
                    location = response.headers.get("location", "")
                    try:
                        target = response.url.join(location)
                    except httpx.InvalidURL:
                        raise FetchRefused("bad_redirect", f"{current.host} redirects to an invalid URL") from None
                    current = self._checked_url(target, redirect=True)
                    redirects.append(str(current))
                finally:
                    response.close()
        raise FetchRefused("too_many_redirects", f"{_url_host(url)}: more than {self.max_redirects} redirects")

    # -- one hop ---------------------------------------------------------------------------------

    def _checked_url(self, url: str | httpx.URL, *, redirect: bool = False) -> httpx.URL:
        what = "redirect target" if redirect else "URL"
        try:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            raise FetchRefused("invalid_url", f"not a valid {what}") from None
        if parsed.scheme not in ("http", "https"):
            raise FetchRefused("scheme_not_allowed", f"{what} scheme {parsed.scheme or '(none)'!r}: only http and "
                                                     "https are fetched")
        if parsed.userinfo:
            raise FetchRefused("invalid_url", f"a {what} with credentials is never fetched")
        host = parsed.raw_host.decode("ascii")
        if not host:
            raise FetchRefused("invalid_url", f"the {what} has no host")
        if not self.allowlist.allows(host):
            raise FetchRefused("host_not_allowed", f"{what} host {host} is not on the fetch allowlist")
        return parsed.copy_with(fragment=None)

    def _client(self, deadline: float) -> httpx.Client:
        backend = PinnedBackend(resolver=self.resolver, allow_private=self.allow_private, deadline=deadline,
                                clock=self.clock)
        pool = httpcore.ConnectionPool(ssl_context=self._ssl(), max_connections=2, retries=0,
                                       network_backend=backend)
        headers = {"User-Agent": self.user_agent, "Accept": "text/html, text/plain;q=0.9",
                   "Accept-Encoding": "identity"}
        # trust_env=False: no proxy from the environment (a proxy would connect where it likes).
        return httpx.Client(transport=_PinnedTransport(pool), headers=headers, follow_redirects=False,
                            trust_env=False)

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context

    def _send(self, client: httpx.Client, url: httpx.URL, deadline: float) -> httpx.Response:
        left = deadline - self.clock()
        if left <= 0:
            raise FetchError("total_timeout", f"{url.host}: the fetch took more than {self.total_timeout:g} s")
        timeout = httpx.Timeout(min(self.timeout, left), connect=min(self.connect_timeout, left))
        try:
            return client.send(client.build_request("GET", url, timeout=timeout), stream=True)
        except FetchError as exc:
            raise self._past_deadline(exc, deadline, url) from None
        except httpx.HTTPError as exc:
            raise FetchError("protocol_error", f"{url.host}: {exc.__class__.__name__}") from None

    def _past_deadline(self, exc: FetchError, deadline: float, url: httpx.URL) -> FetchError:
        # A wait cut short to fit the whole fetch's time is that time running out.
        if exc.code.endswith("timeout") and self.clock() >= deadline:
            return FetchError("total_timeout", f"{url.host}: the fetch took more than {self.total_timeout:g} s")
        return exc

    def _read(self, response: httpx.Response, deadline: float, redirects: tuple[str, ...]) -> FetchResult:
        url = response.url
        if not 200 <= response.status_code < 300:
            raise FetchError("http_status", f"{url.host} answered HTTP {response.status_code}")
        media = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media not in TEXT_TYPES:
            raise FetchRefused("content_type", f"{url.host}: content type {media or '(none)'!r} is not "
                                               "text/html or text/plain")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise FetchRefused("content_encoding", f"{url.host}: compressed body ({encoding}) refused")
        body = bytearray()
        truncated = False
        try:
            for chunk in response.iter_raw():
                room = self.max_bytes - len(body)
                if len(chunk) > room:  # stop at the cap: the rest is never read
                    body += chunk[:room]
                    truncated = True
                    break
                body += chunk
                if self.clock() >= deadline:
                    raise FetchError("total_timeout", f"{url.host}: the fetch took more than "
                                                      f"{self.total_timeout:g} s")
        except FetchError as exc:
            raise self._past_deadline(exc, deadline, url) from None
        except httpx.HTTPError as exc:
            raise FetchError("protocol_error", f"{url.host}: {exc.__class__.__name__}") from None
        charset = _charset(response.charset_encoding, bytes(body[:2048]) if media == "text/html" else b"")
        decoded = codecs.getincrementaldecoder(charset)(errors="replace").decode(bytes(body), final=not truncated)
        title, text = visible_text(decoded) if media == "text/html" else (None, _collapse(decoded))
        if len(text) > self.max_chars:
            text, truncated = text[:self.max_chars].rstrip(), True
        return FetchResult(url=str(url), status=response.status_code, content_type=media, title=title, text=text,
                           sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), bytes_read=len(body),
                           truncated=truncated, redirects=redirects)


def _url_host(url: str) -> str:
    try:
        return httpx.URL(url).host or "(no host)"
    except (httpx.InvalidURL, TypeError):
        return "(invalid URL)"


def _charset(declared: str | None, head: bytes) -> str:
    candidates = [declared]
    found = _META_CHARSET.search(head)
    if found:
        candidates.append(found.group(1).decode("ascii"))
    for name in candidates:
        if name:
            try:
                info = codecs.lookup(name)
            except LookupError:
                continue
            # Only a text encoding: "zlib", "base64" or "rot13" are codecs too, and a page must not
            # get its body decompressed or its decoder to fail by naming one.
            if getattr(info, "_is_text_encoding", True):
                return info.name
    return "utf-8"


# -- httpx on the pinned backend ---------------------------------------------------------------

_CORE_ERRORS = ((httpcore.ConnectTimeout, "connect_timeout"), (httpcore.ReadTimeout, "read_timeout"),
             (httpcore.TimeoutException, "timeout"), (httpcore.ConnectError, "connect_failed"),
             (httpcore.UnsupportedProtocol, "invalid_url"), (httpcore.NetworkError, "network_error"),
             (httpcore.ProtocolError, "protocol_error"))


@contextmanager
def _translated(host: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for kind, code in _CORE_ERRORS:
            if isinstance(exc, kind):
                detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
                raise FetchError(code, f"{host}: {detail}") from None
        raise


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes], host: str) -> None:
        self._stream = stream
        self._host = host

    def __iter__(self) -> Iterator[bytes]:
        with _translated(self._host):
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            with _translated(self._host):
                close()


class _PinnedTransport(httpx.BaseTransport):
    """httpx's default transport, on a pool whose network backend is a ``PinnedBackend``
    (``httpx.HTTPTransport`` takes no backend); httpcore's errors become ``FetchError``."""

    def __init__(self, pool: httpcore.ConnectionPool) -> None:
        self._pool = pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw, content=request.stream,  # type: ignore[arg-type]
            extensions=request.extensions)
        with _translated(url.host):
            response = self._pool.handle_request(core)
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_Body(response.stream, url.host),  # type: ignore[arg-type]
                              extensions=response.extensions)

    def close(self) -> None:
        self._pool.close()


# -- HTML to visible text -----------------------------------------------------------------------

# Elements whose content is never shown as text.
_HIDDEN = frozenset({"script", "style", "noscript", "template", "svg", "math", "iframe", "object", "canvas"})
# Elements inside a line of text: no word break at their edges.
_INLINE = frozenset({"a", "abbr", "b", "bdi", "bdo", "cite", "code", "data", "dfn", "em", "font", "i", "kbd",
                     "mark", "q", "s", "samp", "small", "span", "strong", "sub", "sup", "time", "u", "var", "wbr"})


class _VisibleText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._hidden = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self._hidden += 1
        elif tag == "title":
            self._in_title = True
        elif tag not in _INLINE:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _INLINE and tag not in _HIDDEN:  # <br/>, <img/>: a break, never a hidden block
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag == "title":
            self._in_title = False
        elif tag not in _INLINE:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        (self.title if self._in_title else self.parts).append(data)


def _collapse(text: str) -> str:
    return " ".join(text.split())


def visible_text(html: str) -> tuple[str | None, str]:
    """``(title, text)`` of an HTML document: the text a reader sees, whitespace collapsed."""
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    title = _collapse("".join(parser.title))[:_TITLE_CHARS] or None
    return title, _collapse("".join(parser.parts))
