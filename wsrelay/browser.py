"""The browser client, ``wsrelay/static/wsrelay.js``, as every service
answers it (docs/guide.md, "The browser client: wsrelay.js").

``GET /wsrelay.js`` is the file as it ships: a classic script defining the
global ``WsRelay``. ``GET /wsrelay.mjs`` is the same file as an ES module:
one export line after it. Both carry an ETag (a hash of the body) and
``Cache-Control: no-cache``, so a browser keeps its copy and asks each time
whether it is still current: a ``304`` while it is, the new file after an
upgrade of wsrelay. They may be loaded from pages of any origin (a module
script of another origin needs ``Access-Control-Allow-Origin``): the file is
public, and loading it grants nothing.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Optional

from .http import Response

SOURCE = Path(__file__).parent / "static" / "wsrelay.js"
# What turns the classic script into an ES module: its var, exported.
MODULE_EXPORTS = b"\nexport { WsRelay };\nexport default WsRelay;\n"
# Path -> whether it is the module form.
PATHS = {"/wsrelay.js": False, "/wsrelay.mjs": True}
CONTENT_TYPE = "text/javascript; charset=utf-8"


@functools.cache
def _body(module: bool) -> tuple[bytes, str]:
    """The file (or its module form) and its ETag, read once per process."""
    body = SOURCE.read_bytes() + (MODULE_EXPORTS if module else b"")
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def answer(path: str, if_none_match: Optional[str]) -> Optional[Response]:
    """The answer to ``GET path`` when it is the browser client's (None when
    it is not): the file, or ``304`` when ``if_none_match`` names its ETag."""
    module = PATHS.get(path)
    if module is None:
        return None
    body, etag = _body(module)
    res = Response()
    res.header("ETag", etag)
    res.header("Cache-Control", "no-cache")
    res.header("Access-Control-Allow-Origin", "*")
    if if_none_match is not None and _matches(if_none_match, etag):
        return res.status(304)
    res.header("Content-Type", CONTENT_TYPE)
    res.header("X-Content-Type-Options", "nosniff")
    return res.write(body)


def _matches(if_none_match: str, etag: str) -> bool:
    """Whether an If-None-Match header names ``etag`` (or is ``*``); a weak
    comparison, as RFC 9110 has it for GET."""
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False
