"""Fetching repository data over HTTP from an ordered list of servers, failing over between them."""

from __future__ import annotations

from collections.abc import Callable

import requests

from ucernvm import __version__
from ucernvm.client.sources import corrupt_object_error
from ucernvm.cvmfs.hashing import ContentHash, ObjectType
from ucernvm.errors import ConfigError, FetchError, UcernvmError

USER_AGENT = f"cvmfs ucernvm {__version__}"
DEFAULT_TIMEOUT = 5.0


class HttpSource:
    """Servers tried in order for every request; an object is accepted only if its hash matches."""

    def __init__(self, urls: list[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        if not urls:
            raise ConfigError("no server URL given")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"not an HTTP URL: {url!r}")
        self.urls = [url.rstrip("/") for url in urls]
        self.timeout = timeout
        self.description = ";".join(self.urls)
        self._session = requests.Session()
        self._session.headers.update({"User-Agent": USER_AGENT})

    def fetch_named(self, name: str) -> bytes:
        # Manifests and whitelists change: ask caches along the way for a fresh copy, as cvmfs does.
        headers = {"Cache-Control": "no-cache", "Pragma": "no-cache"}
        return self._first_good(name, headers, lambda data, url: None)

    def fetch_object(self, content_hash: ContentHash, object_type: ObjectType) -> bytes:
        def check(data: bytes, url: str) -> None:
            if not content_hash.matches(data):
                raise corrupt_object_error(content_hash, object_type, url)

        return self._first_good(content_hash.object_path(object_type), {}, check)

    def _first_good(self, relative: str, headers: dict[str, str], check: Callable[[bytes, str], None]) -> bytes:
        failures: list[UcernvmError] = []
        for base in self.urls:
            url = f"{base}/{relative}"
            try:
                response = self._session.get(url, headers=headers, timeout=self.timeout)
            except requests.RequestException as error:
                failures.append(FetchError(f"{url}: {type(error).__name__}"))
                continue
            if response.status_code != 200:
                failures.append(FetchError(f"{url}: HTTP {response.status_code}"))
                continue
            try:
                check(response.content, url)
            except UcernvmError as error:
                failures.append(error)
                continue
            return response.content
        corrupt = [failure for failure in failures if not isinstance(failure, FetchError)]
        if corrupt:
            raise corrupt[0]
        raise FetchError(
            f"cannot fetch {relative} from any server: " + "; ".join(failure.message for failure in failures),
            "check the server URLs and that the servers are up",
        )
