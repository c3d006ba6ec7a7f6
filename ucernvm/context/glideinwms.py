"""glideinWMS user-data, recognised as µCernVM did: the proxy and PAC URLs of a CMS glidein.

A glideinWMS factory starts VMs with one line of user-data, ``<base64 of an INI>####-cluster N
-subcluster M####``. The INI's ``args`` line holds the glidein's command line, whose
``-param_CERNVM_CMS_PROXY`` and ``-param_CERNVM_CMS_PAC_URLS`` values (in glidein's escaping) become
``cvmfs_http_proxy`` and ``cvmfs_pac_urls``. The boot skips this when ``useglideinWMS=off``.
"""

from __future__ import annotations

import base64
import binascii
import re

# The factory writes "####" after the subcluster too, and µCernVM's pattern wants it: a line cut
# before it is no glidein's.
_LINE = re.compile(rb"([A-Za-z0-9+/=]+)####[ \t]*-cluster[ \t]+\d+[ \t]+-subcluster[ \t]+\d+[ \t]*####")
_ESCAPES = {"semicolon": ";", "colon": ":", "pipe": "|", "minus": "-", "dot": "."}
_ESCAPE = re.compile(r"\.(" + "|".join(_ESCAPES) + "),")
PARAMETERS = {"-param_CERNVM_CMS_PROXY": "cvmfs_http_proxy", "-param_CERNVM_CMS_PAC_URLS": "cvmfs_pac_urls"}


def unescape(text: str) -> str:
    """Undo glidein's parameter escaping in one pass (so ``.dot,colon,`` stays ``.colon,``)."""
    return _ESCAPE.sub(lambda match: _ESCAPES[match.group(1)], text)


def detect(user_data: bytes) -> dict[str, str] | None:
    """The ucernvm settings a glideinWMS user-data implies (possibly none), or None when it is not one."""
    if user_data.count(b"\n") > 1:  # µCernVM's `wc -l` <= 1: a second line only if nothing ends it
        return None
    match = next(filter(None, (_LINE.fullmatch(line.strip()) for line in user_data.split(b"\n"))), None)
    if match is None:
        return None
    try:
        ini = base64.b64decode(match.group(1), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None
    args = next((line.partition("=")[2] for line in ini.splitlines()
                 if line.strip().startswith("args") and line.strip()[4:].lstrip().startswith("=")), "")
    words = args.split()
    settings = {}
    for flag, key in PARAMETERS.items():
        if flag in words[:-1]:
            settings[key] = unescape(words[words.index(flag) + 1])
    return settings
