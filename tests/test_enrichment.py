"""Enrichment: company facts from the lead store, and the guarded website fetcher.

The fetcher is tested against a real HTTP server on 127.0.0.1 in a thread.
Nothing here needs the internet, nor DNS beyond "localhost": names other
than that go through a scripted resolver.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest import mock

from sqlalchemy import select

from agent.agents.enricher import WEBSITE_TEXT_CHARS, EnricherAgent
from agent.agents.lead_loader import LeadLoaderAgent
from agent.context import RunContext
from agent.enrichment import Allowlist, FetchError, FetchRefused, address_refusal, department, seniority
from agent.enrichment.fetcher import WebsiteFetcher, visible_text
from agent.envelope import validate_envelope
from agent.errors import ConfigurationError, PayloadError
from agent.leads.store import LeadStore
from agent.settings import Settings, get_settings
from agent.storage.models import Contact
from tests.support import TempHome

PAGE = """<!doctype html><html><head><title> Acme  Corp &amp; Robots </title>
<style>body { color: red }</style><script>var secret = "not text";</script></head>
<body><nav>Home</nav><h1>We build <b>robots</b></h1><p>For   factories,
warehouses and&nbsp;labs.</p><noscript>enable js</noscript><svg><text>logo</text></svg></body></html>"""
PAGE_TEXT = "Home We build robots For factories, warehouses and labs."  # &nbsp; is whitespace too
HUGE_BODY = b"<html><body>" + b"a " * 1_000_000 + b"</body></html>"


class FakeClock:
    """A monotonic clock that moves only when told (the server moves it to stand for a slow site)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


HTML = "text/html; charset=utf-8"
# path -> (status, body, content type, extra headers); "/site/<domain>" serves PAGE too
ROUTES: dict[str, tuple[int, bytes, str, dict[str, str]]] = {
    "/page": (200, PAGE.encode(), HTML, {}),
    "/plain": (200, b"Plain\n\n  words   here", "text/plain", {}),
    "/latin1": (200, "<p>Caf\xe9 M\xfcller</p>".encode("latin-1"), "text/html; charset=iso-8859-1", {}),
    "/huge": (200, HUGE_BODY, HTML, {}),
    "/json": (200, b'{"a": 1}', "application/json", {}),
    "/gzip": (200, b"\x1f\x8b not really", HTML, {"Content-Encoding": "gzip"}),
    "/missing": (404, b"<p>no</p>", HTML, {}),
    "/hop": (301, b"", HTML, {"Location": "/page"}),
    "/loop": (302, b"", HTML, {"Location": "/loop"}),
    "/to-metadata": (302, b"", HTML, {"Location": "http://169.254.169.254/latest/meta-data/"}),
    "/to-elsewhere": (302, b"", HTML, {"Location": "http://elsewhere.test/"}),
    "/to-ftp": (302, b"", HTML, {"Location": "ftp://acme.example/file"}),
    "/zlib": (200, b"<p>hello</p>", "text/html; charset=zlib", {}),
    "/meta-base64": (200, b'<meta charset="base64"><p>hello</p>', "text/html", {}),
}


class _Handler(BaseHTTPRequestHandler):
    server: SiteServer

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.server.seen.append((self.path, self.headers.get("Host")))
        if self.path == "/slow":
            self.server.release.wait(10)  # set by the test's cleanup, long after the fetcher gave up
        elif self.path == "/tick":
            self.server.clock.now += 100  # as if the site took 100 s to answer
        elif self.path == "/dribble":  # a header line every 50 ms, for ever: each read is quick
            self.send_response(200)
            try:
                while not self.server.release.is_set():
                    self.wfile.write(b"X-Filler: 1\r\n")
                    self.wfile.flush()
                    self.server.release.wait(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the fetcher gave up and hung up
            return
        route = ROUTES.get(self.path, ROUTES["/page"] if self.path.startswith(("/site/", "/slow", "/tick",
                                                                                 "/echo")) else ROUTES["/missing"])
        status, body, content_type, headers = route
        self.send_response(status)
        for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetcher stopped reading at its cap and hung up


class SiteServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that records each request's path and Host header."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str | None]] = []
        self.release = threading.Event()
        self.clock = FakeClock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, name="site-server",
                                       daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def stop(self) -> None:
        self.release.set()  # a handler held by /slow returns now
        self.shutdown()
        self.server_close()
        self.thread.join()


class ServerTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.server = SiteServer()
        self.addCleanup(self.server.stop)

    def fetcher(self, *hosts: str, **options: Any) -> WebsiteFetcher:
        """A fetcher that may reach the test server at 127.0.0.1 (and nothing else private)."""
        options.setdefault("allow_private_networks", ["127.0.0.1/32"])
        options.setdefault("timeout", 5.0)
        return WebsiteFetcher(["127.0.0.1", *hosts], **options)

    def refusal(self, fetcher: WebsiteFetcher, url: str) -> FetchError:
        with self.assertRaises(FetchError) as caught:
            fetcher.fetch(url)
        return caught.exception


class RulesTests(unittest.TestCase):
    """The pure rules: allowlist matching, address kinds, title words, visible text."""

    def test_an_entry_allows_itself_and_its_subdomains_and_an_address_only_itself(self) -> None:
        allow = Allowlist.parse(" Acme.Example , *.robots.example, 10.1.2.3,")
        cases = {"acme.example": True, "www.acme.example.": True, "shop.robots.example": True, "10.1.2.3": True,
                 "evilacme.example": False, "acme.example.evil.test": False, "110.1.2.3": False,
                 "1.2.3.acme.example.1": False}
        for host, allowed in cases.items():
            with self.subTest(host=host):
                self.assertIs(allow.allows(host), allowed)
        self.assertFalse(Allowlist.parse(" , "))

    def test_an_entry_that_is_not_a_domain_or_address_is_a_configuration_error(self) -> None:
        for text in ("acme.example, https://robots.example/", "acme.example:8080", "2.3"):
            with self.subTest(entry=text), self.assertRaises(ConfigurationError) as caught:
                Allowlist.parse(text)
            self.assertIn("enrich_fetch_allowlist", str(caught.exception))

    def test_each_kind_of_non_public_address_is_named_and_public_ones_pass(self) -> None:
        cases = {
            "127.0.0.1": "loopback", "::1": "loopback", "10.0.0.1": "private", "192.168.1.5": "private",
            "169.254.169.254": "link-local", "fe80::1": "link-local", "224.0.0.1": "multicast",
            "ff02::1": "multicast", "0.0.0.0": "unspecified", "::": "unspecified", "240.0.0.1": "reserved",
            "100.64.0.1": "not globally routable", "::ffff:127.0.0.1": "loopback", "::ffff:10.0.0.1": "private",
            "64:ff9b::a9fe:a9fe": "link-local", "2002:7f00:1::": "loopback", "fc00::1": "private",
            "93.184.216.34": None, "8.8.8.8": None, "2606:4700:4700::1111": None,
        }
        for text, expected in cases.items():
            with self.subTest(address=text):
                self.assertEqual(address_refusal(ipaddress.ip_address(text)), expected)

    def test_seniority_and_department_come_from_title_words(self) -> None:
        cases = {
            "CEO": ("c_level", "executive"), "Co-Founder": ("c_level", "executive"),
            "Chief Revenue Officer": ("c_level", "sales"), "VP of Engineering": ("vp", "engineering"),
            "Senior Vice President, Finance": ("vp", "finance"), "Head of People": ("head", "people"),
            "Sales Director": ("director", "sales"), "Procurement Manager": ("manager", "operations"),
            "Account Executive": ("individual", "sales"), "Assistant to the CEO": ("individual", "executive"),
            "Gardener": ("individual", "other"), None: (None, None), "  ": (None, None),
        }
        for title, expected in cases.items():
            with self.subTest(title=title):
                self.assertEqual((seniority(title), department(title)), expected)

    def test_html_becomes_the_text_a_reader_sees(self) -> None:
        self.assertEqual(visible_text(PAGE), ("Acme Corp & Robots", PAGE_TEXT))
        # block elements separate words, inline ones do not
        self.assertEqual(visible_text("<p>one</p><p>two<br>three</p><p>f<em>ou</em>r</p>"),
                         (None, "one two three four"))


class DefaultRefusalTests(ServerTestCase):
    """Without allow_private_networks, no private address is reached, whatever the allowlist says."""

    def test_private_and_loopback_addresses_are_refused_before_connecting(self) -> None:
        # Given a fetcher whose allowlist names the addresses themselves
        port = self.server.port
        fetcher = WebsiteFetcher(["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "localhost"])
        cases = {f"http://127.0.0.1:{port}/page": "loopback", "http://10.0.0.1/": "private",
                 "http://169.254.169.254/latest/meta-data/": "link-local", f"http://[::1]:{port}/page": "loopback",
                 f"http://localhost:{port}/page": "loopback"}
        for url, kind in cases.items():
            with self.subTest(url=url):
                # When each is fetched
                error = self.refusal(fetcher, url)
                # Then it is refused as a non-public address of its kind
                self.assertIsInstance(error, FetchRefused)
                self.assertEqual(error.code, "private_address")
                self.assertIn(f"a {kind} address", str(error))
        # And the server on 127.0.0.1 never got a request
        self.assertEqual(self.server.seen, [])

    def test_urls_off_the_allowlist_or_of_other_schemes_are_refused_without_a_lookup(self) -> None:
        lookups: list[str] = []
        fetcher = WebsiteFetcher(["acme.example"], resolver=lambda host, port: lookups.append(host) or ["1.1.1.1"])
        cases = {"https://elsewhere.test/": "host_not_allowed", "https://acme.example.evil.test/": "host_not_allowed",
                 "ftp://acme.example/": "scheme_not_allowed", "file:///etc/passwd": "scheme_not_allowed",
                 "https://user:pw@acme.example/": "invalid_url"}
        for url, code in cases.items():
            with self.subTest(url=url):
                self.assertEqual(self.refusal(fetcher, url).code, code)
        self.assertEqual(lookups, [])


class FetchTests(ServerTestCase):
    def test_an_html_page_gives_its_title_and_visible_text(self) -> None:
        result = self.fetcher().fetch(self.server.url("/page"))
        self.assertEqual((result.status, result.content_type, result.title), (200, "text/html", "Acme Corp & Robots"))
        self.assertEqual(result.text, PAGE_TEXT)
        self.assertEqual(result.sha256, hashlib.sha256(PAGE_TEXT.encode()).hexdigest())
        self.assertFalse(result.truncated)

    def test_plain_text_is_collapsed_and_a_declared_charset_is_used(self) -> None:
        fetcher = self.fetcher()
        self.assertEqual(fetcher.fetch(self.server.url("/plain")).text, "Plain words here")
        self.assertEqual(fetcher.fetch(self.server.url("/latin1")).text, "Caf\xe9 M\xfcller")

    def test_the_connection_goes_to_the_checked_address_with_the_host_name_kept(self) -> None:
        # Given a name only the fetcher's resolver knows, answering 127.0.0.1
        lookups: list[str] = []
        fetcher = self.fetcher("site.test", resolver=lambda host, port: lookups.append(host) or ["127.0.0.1"])
        # When it is fetched
        result = fetcher.fetch(self.server.url("/echo-host", host="site.test"))
        # Then it was looked up once, reached there, and asked for by its name
        self.assertEqual(lookups, ["site.test"])
        self.assertEqual(self.server.seen, [("/echo-host", f"site.test:{self.server.port}")])
        self.assertEqual(result.text, PAGE_TEXT)

    def test_a_name_resolving_to_a_private_address_is_refused(self) -> None:
        fetcher = self.fetcher("site.test", resolver=lambda host, port: ["93.184.216.34", "10.0.0.7"])
        error = self.refusal(fetcher, "http://site.test/")
        self.assertEqual(error.code, "private_address")
        self.assertIn("site.test resolves to a private address (10.0.0.7)", str(error))

    def test_a_page_over_the_size_cap_is_truncated_at_the_cap(self) -> None:
        result = self.fetcher(max_bytes=20_000).fetch(self.server.url("/huge"))
        self.assertTrue(result.truncated)
        self.assertEqual(result.bytes_read, 20_000)
        self.assertEqual(set(result.text.split()), {"a"})

    def test_the_text_is_cut_at_the_character_cap(self) -> None:
        result = self.fetcher(max_chars=10).fetch(self.server.url("/page"))
        self.assertEqual((result.text, result.truncated), ("Home We bu", True))

    def test_a_page_that_does_not_answer_in_time_is_a_read_timeout(self) -> None:
        fetcher = self.fetcher(timeout=0.3, total_timeout=60)
        error = self.refusal(fetcher, self.server.url("/slow"))
        self.assertNotIsInstance(error, FetchRefused)
        self.assertEqual(error.code, "read_timeout")
        self.assertEqual([path for path, _ in self.server.seen], ["/slow"])

    def test_a_fetch_past_its_total_time_stops(self) -> None:
        fetcher = self.fetcher(total_timeout=10, clock=self.server.clock)
        self.assertEqual(self.refusal(fetcher, self.server.url("/tick")).code, "total_timeout")

    def test_headers_dribbled_past_the_total_time_end_the_fetch(self) -> None:
        # Every read answers within the read timeout; the whole fetch must still end at its total time
        fetcher = self.fetcher(timeout=5, total_timeout=0.5)
        self.assertEqual(self.refusal(fetcher, self.server.url("/dribble")).code, "total_timeout")

    def test_a_charset_that_is_not_a_text_encoding_is_ignored(self) -> None:
        # "zlib" or "base64" name codecs too: the body is read as UTF-8, never decompressed or decoded so
        for path in ("/zlib", "/meta-base64"):
            with self.subTest(path=path):
                self.assertEqual(self.fetcher().fetch(self.server.url(path)).text, "hello")

    def test_a_redirect_is_followed_and_reported(self) -> None:
        result = self.fetcher().fetch(self.server.url("/hop"))
        self.assertEqual((result.url, result.redirects), (self.server.url("/page"), (self.server.url("/page"),)))
        self.assertEqual(result.text, PAGE_TEXT)

    def test_a_redirect_to_a_private_address_is_refused(self) -> None:
        fetcher = self.fetcher("169.254.169.254")
        error = self.refusal(fetcher, self.server.url("/to-metadata"))
        self.assertEqual(error.code, "private_address")
        self.assertIn("169.254.169.254 is a link-local address", str(error))

    def test_a_redirect_off_the_allowlist_is_refused_without_a_lookup(self) -> None:
        lookups: list[str] = []
        fetcher = self.fetcher(resolver=lambda host, port: lookups.append(host) or ["127.0.0.1"])
        error = self.refusal(fetcher, self.server.url("/to-elsewhere"))
        self.assertEqual((error.code, lookups), ("host_not_allowed", []))
        self.assertIn("redirect target host elsewhere.test", str(error))

    def test_redirects_stop_after_the_limit(self) -> None:
        error = self.refusal(self.fetcher(max_redirects=2), self.server.url("/loop"))
        self.assertEqual(error.code, "too_many_redirects")
        self.assertEqual(len(self.server.seen), 3)

    def test_a_page_that_gives_no_text_fails_with_a_code_saying_why(self) -> None:
        cases = {"/json": ("content_type", "127.0.0.1: content type 'application/json' is not text/html or "
                                           "text/plain"),
                 "/gzip": ("content_encoding", "127.0.0.1: compressed body (gzip) refused"),
                 "/missing": ("http_status", "127.0.0.1 answered HTTP 404"),
                 "/to-ftp": ("scheme_not_allowed", "redirect target scheme 'ftp': only http and https are fetched")}
        for path, expected in cases.items():
            with self.subTest(path=path):
                error = self.refusal(self.fetcher("acme.example"), self.server.url(path))
                self.assertEqual((error.code, str(error)), expected)

    def test_a_closed_port_is_a_connect_failure(self) -> None:
        port = self.server.port
        self.server.stop()
        error = self.refusal(self.fetcher(), f"http://127.0.0.1:{port}/page")
        self.assertEqual(error.code, "connect_failed")
        self.assertIsNone(error.__cause__)


class SettingsTests(unittest.TestCase):
    def test_the_fetcher_is_off_by_default(self) -> None:
        defaults = {name: Settings.model_fields[name].default for name in ("enrich_fetch", "enrich_fetch_allowlist")}
        self.assertEqual(defaults, {"enrich_fetch": False, "enrich_fetch_allowlist": ""})

    def test_the_fetch_settings_come_from_the_environment(self) -> None:
        env = {"AGENT_ENRICH_FETCH": "true", "AGENT_ENRICH_FETCH_ALLOWLIST": "acme.example, robots.example",
               "AGENT_ENRICH_FETCH_TIMEOUT": "2.5", "AGENT_ENRICH_FETCH_MAX_BYTES": "4096"}
        with mock.patch.dict(os.environ, env):
            settings = get_settings()
        fetcher = WebsiteFetcher.from_settings(settings)
        self.assertTrue(settings.enrich_fetch)
        self.assertEqual(fetcher.allowlist.names, ("acme.example", "robots.example"))
        self.assertEqual((fetcher.timeout, fetcher.total_timeout, fetcher.max_bytes), (2.5, 7.5, 4096))
        self.assertIs(fetcher.allow_private, False)

    def test_a_fetch_size_below_the_floor_is_a_configuration_error(self) -> None:
        with self.assertRaises(ConfigurationError) as caught:
            get_settings(enrich_fetch_max_bytes=10)
        self.assertIn("enrich_fetch_max_bytes", str(caught.exception))


ROWS = [
    {"email": "ada@acme.example", "title": "CEO", "company": "Acme Corp", "domain": "acme.example",
     "industry": "Robotics", "size": "51-200", "company_location": "Berlin"},
    {"email": "ben@acme.example", "title": "VP of Sales", "company": "Acme Corp", "domain": "acme.example"},
    {"email": "carla@acme.example", "title": "Sales Manager", "company": "Acme Corp", "domain": "acme.example"},
    {"email": "dan@acme.example", "title": "Account Executive", "company": "Acme Corp", "domain": "acme.example"},
    {"email": "eve@solo.example", "company": "Solo Ltd", "domain": "solo.example"},
]
# The same company in another tenant: never counted, never read.
OTHER_TENANT = [{"email": f"p{i}@acme.example", "title": "CTO", "company": "Acme Corp", "domain": "acme.example"}
                for i in range(3)]


class LeadStoreFixture:
    """Mixin: a temporary store holding ROWS (tenant "default") and OTHER_TENANT (tenant "other")."""

    home: TempHome

    @classmethod
    def setUpClass(cls) -> None:
        cls.home = TempHome()
        cls.db = cls.home.database()
        LeadStore(cls.db, tenant="default").upsert_rows(ROWS)
        LeadStore(cls.db, tenant="other").upsert_rows(OTHER_TENANT)
        with cls.db.session() as s:
            cls.ids = {email.split("@")[0]: i for i, email, tenant in s.execute(
                select(Contact.id, Contact.email, Contact.tenant_id)) if tenant == "default"}
            cls.foreign_id = s.execute(select(Contact.id).where(Contact.tenant_id == "other")).scalars().first()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.home.cleanup()

    def context(self, tenant: str = "default", **settings: Any) -> RunContext:
        base = self.home.settings if not settings else self.home.settings.model_copy(update=settings)
        return RunContext(settings=base, tenant=tenant, node="enrich")

    def leads(self, *names: str, tenant: str = "default") -> list[dict[str, Any]]:
        ids = [self.ids[n] if n in self.ids else n for n in names]
        return LeadLoaderAgent(self.db).run({"lead_ids": ids}, context=self.context(tenant))["records"]


class EnricherAgentTests(LeadStoreFixture, unittest.TestCase):
    def enrich(self, *names: Any, tenant: str = "default") -> dict[str, Any]:
        return EnricherAgent(self.db).run({"leads": self.leads(*names, tenant=tenant)}, context=self.context())

    def test_each_lead_gets_company_facts_of_its_own_tenant(self) -> None:
        # When the CEO of Acme is enriched
        env = self.enrich("ada")
        # Then its company's facts count only this tenant's four contacts there
        record = env["records"][0]
        self.assertEqual(record["enrichment"], {
            "seniority": "c_level", "department": "executive", "is_senior": True,
            "company_domain": "acme.example", "company_industry": "Robotics", "company_size": "51-200",
            "company_location": "Berlin", "company_contacts": 4,
            "company_seniority": {"c_level": 1, "vp": 1, "manager": 1, "individual": 1},
            "company_departments": {"sales": 3, "executive": 1}, "company_senior_contacts": 2})
        self.assertEqual(record["email"], "ada@acme.example")
        self.assertEqual((env["metadata"]["partial"], env["metadata"]["website_fetch"]), (False, False))
        validate_envelope(env)

    def test_every_added_field_names_its_own_source(self) -> None:
        lead = self.leads("dan")[0]
        record = EnricherAgent(self.db).run({"lead": lead}, context=self.context())["records"][0]
        where, company = record["enrichment_provenance"], f"companies/{lead['company_id']}"
        self.assertEqual(set(where), set(record["enrichment"]))
        self.assertEqual([where[f]["source_id"] for f in ("is_senior", "company_industry", "company_contacts")],
                         [f"contacts/{lead['lead_id']}", company, f"{company}/contacts"])
        self.assertEqual({(w["source"], w["agent"]) for w in where.values()}, {("leads_db", "enricher")})

    def test_the_record_descends_from_the_lead_record(self) -> None:
        lead = self.leads("ben")[0]
        record = EnricherAgent(self.db).run({"leads": [lead]}, context=self.context())["records"][0]
        self.assertEqual(record["provenance"]["parents"], [lead["provenance"]["hash"]])
        self.assertEqual((record["provenance"]["source"], record["provenance"]["agent"]), ("enricher", "enricher"))

    def test_a_lead_without_title_or_company_facts_gets_what_is_known(self) -> None:
        self.assertEqual(self.enrich("eve")["records"][0]["enrichment"], {
            "company_domain": "solo.example", "company_contacts": 1, "company_seniority": {},
            "company_departments": {}, "company_senior_contacts": 0})

    def test_a_lead_of_another_tenant_is_not_read(self) -> None:
        # When the default tenant enriches a lead record of tenant "other"
        env = self.enrich(self.foreign_id, tenant="other")
        # Then it gets no facts, and the envelope says why
        self.assertEqual(env["records"][0]["enrichment"], {})
        self.assertEqual(env["metadata"]["errors"][0]["code"], "lead_not_found")
        self.assertEqual((env["metadata"]["partial"], env["metadata"]["not_found"]), (True, 1))

    def test_bad_requests_name_the_field(self) -> None:
        agent, lead = EnricherAgent(self.db), self.leads("ada")[0]
        cases = [({}, "leads"), ({"leads": []}, "leads"), ({"leads": [{"email": "x@y.example"}]}, "leads[0].lead_id"),
                 ({"leads": [lead, "x"]}, "leads[1]"), ({"lead": {"lead_id": 0}}, "lead.lead_id"),
                 ({"leads": [{**lead, "title": "Intern"}]}, "leads[0].provenance.hash")]
        for request, field in cases:
            with self.subTest(field=field), self.assertRaises(PayloadError) as caught:
                agent.run(request, context=self.context())
            self.assertEqual(caught.exception.field, field)


class EnricherWebsiteTests(LeadStoreFixture, ServerTestCase):
    """The website fetcher inside the agent: off unless the setting is on; a failure fails no lead."""

    def enrich(self, *names: str, path: str = "/site/", **settings: Any) -> dict[str, Any]:
        fetcher = self.fetcher("acme.example", max_chars=WEBSITE_TEXT_CHARS)
        agent = EnricherAgent(self.db, fetcher=fetcher, site_url=lambda domain: self.server.url(path + domain))
        return agent.run({"leads": self.leads(*names)}, context=self.context(**settings))

    def test_with_the_setting_off_no_website_is_read(self) -> None:
        env = self.enrich("ada")
        self.assertNotIn("website_text", env["records"][0]["enrichment"])
        self.assertEqual((env["metadata"]["website_fetch"], self.server.seen), (False, []))

    def test_with_the_setting_on_allowed_domains_get_website_fields_once_per_domain(self) -> None:
        # When three Acme leads and one at a domain off the allowlist are enriched
        env = self.enrich("ada", "ben", "carla", "eve", enrich_fetch=True)
        # Then the Acme site was read once, and each Acme lead has its text and title, with provenance
        self.assertEqual(self.server.seen, [("/site/acme.example", f"127.0.0.1:{self.server.port}")])
        for record in env["records"][:3]:
            self.assertEqual((record["enrichment"]["website_text"], record["enrichment"]["website_title"]),
                             (PAGE_TEXT, "Acme Corp & Robots"))
            origin = record["enrichment_provenance"]["website_text"]
            self.assertEqual((origin["source"], origin["source_id"], origin["sha256"]),
                             ("website", self.server.url("/site/acme.example"),
                              hashlib.sha256(PAGE_TEXT.encode()).hexdigest()))
        self.assertNotIn("website_text", env["records"][3]["enrichment"])
        self.assertEqual(env["metadata"]["website"], {"enabled": True, "domains": 1, "fetched": 1, "failed": 0,
                                                      "skipped_leads": 1})
        self.assertFalse(env["metadata"]["partial"])
        validate_envelope(env)

    def test_a_failed_fetch_leaves_the_lead_with_its_store_facts_and_reports_it(self) -> None:
        env = self.enrich("ada", "ben", path="/missing/", enrich_fetch=True)
        self.assertEqual([r["enrichment"]["company_contacts"] for r in env["records"]], [4, 4])
        self.assertFalse(any("website_text" in r["enrichment"] for r in env["records"]))
        meta = env["metadata"]
        self.assertEqual([(e["item"], e["code"], e["node"]) for e in meta["errors"]],
                         [(self.ids["ada"], "http_status", "enrich"), (self.ids["ben"], "http_status", "enrich")])
        self.assertEqual((meta["partial"], meta["website"]["failed"]), (True, 1))
        validate_envelope(env)


if __name__ == "__main__":
    unittest.main()
