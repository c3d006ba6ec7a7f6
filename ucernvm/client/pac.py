"""``auto`` proxies: proxy auto-config (PAC) files, resolved as cvmfs does (``network/wpad.cc``).

A group ``auto`` in ``CVMFS_HTTP_PROXY`` is replaced by the ``http_proxy`` environment variable
when it is set, else by what the first working PAC file of ``CVMFS_PAC_URLS`` (``;``-separated,
``auto`` meaning ``http://wpad/wpad.dat``) says for the first server: ``FindProxyForURL`` runs
in pacparser, the library cvmfs itself uses (a small C JavaScript engine: 12 ms to import, where
pypac pulls in requests and a 17 MB engine and takes ~200 ms), and its answer
``PROXY a:3128; PROXY b:3128; DIRECT`` becomes the groups ``a:3128;b:3128;DIRECT``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from ucernvm.client.lazylog import LazyLogger
from ucernvm.client.proxies import AUTO, normalize_member, parse_proxy_list
from ucernvm.client.transfer import DIRECT
from ucernvm.errors import ConfigError, UcernvmError

AUTO_PAC_URL = "http://wpad/wpad.dat"

log = LazyLogger(__name__)
# pacparser keeps one JavaScript context for the whole process.
_engine_lock = threading.Lock()


def pac_result_to_proxies(result: str) -> str:
    """``PROXY h:p; DIRECT`` (a FindProxyForURL answer) as cvmfs proxy groups ``h:p;DIRECT``.

    SOCKS and unknown entries are skipped; an empty answer means DIRECT (``PacProxy2Cvmfs``). So is a
    proxy the client cannot use (``PROXY squid``, no port): the site's file must not make the
    configuration fail, and the DIRECT or other proxies it gives still work.
    """
    if not result.strip():
        return DIRECT
    groups = []
    for written in result.split(";"):
        entry = "".join(written.split())
        if entry.upper().startswith("PROXY"):
            try:
                normalize_member(entry[5:])
                groups.append(entry[5:])
            except ConfigError:
                log.warning("PAC entry %r skipped: a proxy is host:port", written.strip())
        elif entry == DIRECT:
            groups.append(DIRECT)
        elif entry:
            log.info("PAC entry %r skipped (only PROXY and DIRECT are used)", entry)
    return ";".join(groups)


def evaluate_pac(script: str, server_urls: Sequence[str]) -> str:
    """The proxy groups a PAC script gives for the first server ("" when it gives none or fails)."""
    try:
        import pacparser
    except ImportError:
        raise ConfigError("PAC files need the pacparser module", "pip install pacparser") from None
    answers = []
    with _engine_lock:
        pacparser.init()
        try:
            pacparser.parse_pac_string(script)
            for url in server_urls:
                host = urlsplit(url).hostname or "localhost"
                answers.append(pac_result_to_proxies(pacparser.find_proxy(f"{url}/.cvmfspublished", host)))
        # A broken script or a throwing FindProxyForURL raises the C module's (unexported) error.
        except (pacparser._pacparser.error, pacparser.URLError) as error:
            log.warning("PAC script failed: %s", error)
            return ""
        finally:
            pacparser.cleanup()
    for url, other in zip(server_urls[1:], answers[1:]):
        if other != answers[0]:
            log.info("PAC gives %s for %s, not %s; using the first server's proxies", other, url, answers[0])
    return answers[0] if answers else ""


def auto_proxies(pac_urls: Sequence[str], server_urls: Sequence[str], fetch: Callable[[str], bytes],
                 environ: Mapping[str, str] = os.environ) -> str:
    """What one ``auto`` group stands for ("" when nothing was found)."""
    if environ.get("http_proxy"):
        parse_proxy_list(environ["http_proxy"], "http_proxy (which CVMFS_HTTP_PROXY=auto uses)", allow_auto=False)
        return environ["http_proxy"]
    for pac_url in pac_urls:
        url = AUTO_PAC_URL if pac_url == AUTO else pac_url
        try:
            script = fetch(url).decode("utf-8", "replace")
        except UcernvmError as error:
            log.warning("cannot fetch PAC file %s: %s", url, error)
            continue
        proxies = evaluate_pac(script, server_urls)
        if proxies:
            log.info("proxies %s from PAC file %s", proxies, url)
            return proxies
    return ""


def resolve_proxy_description(proxies: str, pac_urls: Sequence[str], server_urls: Sequence[str],
                              fetch: Callable[[str], bytes], environ: Mapping[str, str] = os.environ) -> str:
    """``CVMFS_HTTP_PROXY`` with every ``auto`` group replaced; groups that found nothing are dropped."""
    groups = proxies.split(";")
    if AUTO not in (group.strip() for group in groups):
        return proxies
    resolved = []
    for group in groups:
        if group.strip() == AUTO:
            group = auto_proxies(pac_urls, server_urls, fetch, environ)
        if group:
            resolved.append(group)
    return ";".join(resolved)
