"""PAC files: FindProxyForURL in pacparser, cvmfs's mapping of its answer, ``auto`` proxies."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults import FaultServer
from ucernvm.client import lazylog
from ucernvm.client.client_config import FetcherConfig
from ucernvm.client.fetcher import HttpSource
from ucernvm.client.pac import AUTO_PAC_URL, auto_proxies, evaluate_pac, pac_result_to_proxies, resolve_proxy_description
from ucernvm.errors import ConfigError, FetchError

SERVER = "http://127.0.0.1:8000/cvmfs/test.cern.ch"

# The PAC helpers real sites use, each deciding one branch. (myIpAddress works too, but looks up
# the machine's own name, which could reach a DNS server: not from a test.)
SITE_PAC = """
function FindProxyForURL(url, host) {
    if (isPlainHostName(host) || dnsDomainIs(host, ".intranet.example"))
        return "DIRECT";
    if (localHostOrDomainIs(host, "www.example.org"))
        return "PROXY 127.0.0.9:80";
    if (!shExpMatch(url, "http://*/cvmfs/*"))
        return "DIRECT";
    var me = "127.0.0.1";
    if (isInNet(dnsResolve(host), "127.0.0.0", "255.0.0.0") && me != "")
        return "PROXY " + "127.0.0.1" + ":3128; PROXY 127.0.0.2:3128; DIRECT";
    else if (shExpMatch(host, "*.cern.ch") || host == "cvmfs")
        return "PROXY 127.0.0.3:3128";
    return "DIRECT";
}
"""


@pytest.fixture(autouse=True)
def no_http_proxy_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)


@pytest.mark.parametrize(
    ("answer", "groups"),
    [("PROXY a:3128; PROXY b:3128; DIRECT", "a:3128;b:3128;DIRECT"), ("", "DIRECT"), ("DIRECT", "DIRECT"),
     ("SOCKS s:1080; PROXY a:3128", "a:3128"), ("proxy a:3128;  PROXY\tb:1", "a:3128;b:1"), ("HTTPS h:443", "")],
)
def test_pac_answers_become_proxy_groups(answer: str, groups: str) -> None:
    assert pac_result_to_proxies(answer) == groups


@pytest.mark.parametrize(
    ("server", "groups"),
    [(SERVER, "127.0.0.1:3128;127.0.0.2:3128;DIRECT"), ("http://localhost/cvmfs/x", "DIRECT"),
     ("http://www.example.org/cvmfs/x", "127.0.0.9:80"), ("http://s1.intranet.example/cvmfs/x", "DIRECT")],
)
def test_pac_helpers_choose_the_proxy(server: str, groups: str) -> None:
    assert evaluate_pac(SITE_PAC, [server]) == groups


def test_first_server_decides() -> None:
    assert evaluate_pac(SITE_PAC, [SERVER, "http://www.example.org/cvmfs/x"]) == "127.0.0.1:3128;127.0.0.2:3128;DIRECT"


@pytest.mark.parametrize("script", ["function FindProxyForURL(url, host) { return ", "var x = 1;",
                                    "function FindProxyForURL(url, host) { return nowhere(); }"])
def test_broken_pac_gives_nothing(script: str) -> None:
    assert evaluate_pac(script, [SERVER]) == ""


@pytest.fixture
def pac_server(tmp_path: Path):
    (tmp_path / "broken.pac").write_text("function FindProxyForURL(url, host) {")
    (tmp_path / "site.pac").write_text(SITE_PAC)
    with FaultServer(tmp_path) as server:
        yield server


def test_pac_urls_tried_in_order(pac_server: FaultServer) -> None:
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return HttpSource([SERVER])._fetch_pac(url)

    urls = [f"{pac_server.url}/missing.pac", f"{pac_server.url}/broken.pac", f"{pac_server.url}/site.pac"]
    warnings: list[str] = []
    lazylog.route(warnings.append)
    try:
        assert auto_proxies(urls, [SERVER], fetch, environ={}) == "127.0.0.1:3128;127.0.0.2:3128;DIRECT"
    finally:
        lazylog.route(None)
    assert fetched == urls
    assert warnings[0] == f"cannot fetch PAC file {urls[0]}: HTTP 404"  # its address said once


def test_http_proxy_variable_comes_first(pac_server: FaultServer) -> None:
    proxies = auto_proxies([f"{pac_server.url}/site.pac"], [SERVER], HttpSource([SERVER])._fetch_pac,
                           environ={"http_proxy": "http://127.0.0.7:3128"})
    assert proxies == "http://127.0.0.7:3128" and pac_server.count() == 0


def test_auto_pac_url_is_wpad() -> None:
    asked: list[str] = []

    def fetch(url: str) -> bytes:  # nothing is sent: "wpad" must not be looked up from a test
        asked.append(url)
        raise FetchError("not fetched")

    assert auto_proxies(["auto"], [SERVER], fetch, environ={}) == ""
    assert asked == [AUTO_PAC_URL] == ["http://wpad/wpad.dat"]


def test_auto_groups_replaced_and_empty_ones_dropped(pac_server: FaultServer) -> None:
    fetch = HttpSource([SERVER])._fetch_pac
    site = [f"{pac_server.url}/site.pac"]
    assert resolve_proxy_description("auto;DIRECT", site, [SERVER], fetch, {}) == \
        "127.0.0.1:3128;127.0.0.2:3128;DIRECT;DIRECT"
    assert resolve_proxy_description("auto;DIRECT", [f"{pac_server.url}/missing.pac"], [SERVER], fetch, {}) == "DIRECT"
    assert resolve_proxy_description("http://127.0.0.1:3128", site, [SERVER], fetch, {}) == "http://127.0.0.1:3128"
    assert pac_server.count("site.pac") == 1


def test_pac_file_chooses_the_proxy_of_the_fetcher(pac_server: FaultServer, tmp_path: Path) -> None:
    """A PAC file served over HTTP sends the client through a proxy it names."""
    with FaultServer(tmp_path) as proxy, FaultServer(tmp_path) as origin:
        (tmp_path / "chooser.pac").write_text(
            'function FindProxyForURL(url, host) {\n'
            f'  if (shExpMatch(url, "*:{origin.port}/cvmfs/*")) return "PROXY 127.0.0.1:{proxy.port}; DIRECT";\n'
            '  return "DIRECT";\n}\n')
        (tmp_path / "test.cern.ch").mkdir()
        (tmp_path / "test.cern.ch" / ".cvmfswhitelist").write_bytes(b"whitelist")
        config = FetcherConfig(server_urls=(f"{origin.url}/cvmfs/@fqrn@",), http_proxy="auto",
                               pac_urls=(f"{pac_server.url}/missing.pac", f"{origin.url}/chooser.pac"))
        src = HttpSource.from_config(config, "test.cern.ch")
        assert src.proxy_groups == [[proxy.url], ["DIRECT"]]
        assert src.fetch_named(".cvmfswhitelist") == b"whitelist"
        assert src.current_proxy == proxy.url and proxy.count(".cvmfswhitelist") == 1


def test_auto_without_any_answer_is_an_error(pac_server: FaultServer) -> None:
    config = FetcherConfig(server_urls=(SERVER,), http_proxy="auto", pac_urls=(f"{pac_server.url}/missing.pac",))
    with pytest.raises(FetchError, match="no proxy found"):
        HttpSource.from_config(config, "test.cern.ch")


def test_pac_proxy_without_port_is_skipped_and_direct_used(tmp_path: Path) -> None:
    """A site's PAC file naming a proxy without its port leaves the other answers usable."""
    with FaultServer(tmp_path) as origin:
        (tmp_path / "noport.pac").write_text(
            'function FindProxyForURL(url, host) { return "PROXY 127.0.0.1; PROXY; DIRECT"; }\n')
        (tmp_path / "test.cern.ch").mkdir()
        (tmp_path / "test.cern.ch" / ".cvmfswhitelist").write_bytes(b"whitelist")
        config = FetcherConfig(server_urls=(f"{origin.url}/cvmfs/@fqrn@",), http_proxy="auto",
                               pac_urls=(f"{origin.url}/noport.pac",))
        src = HttpSource.from_config(config, "test.cern.ch")
        assert src.proxy_groups == [["DIRECT"]]
        assert src.fetch_named(".cvmfswhitelist") == b"whitelist"


def test_unusable_http_proxy_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1")
    with pytest.raises(ConfigError) as error:
        HttpSource.from_config(FetcherConfig(server_urls=(SERVER,), http_proxy="auto;DIRECT"), "test.cern.ch")
    assert error.value.message.startswith("http_proxy") and "'http://127.0.0.1'" in error.value.message
