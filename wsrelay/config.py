"""The application file (docs/guide.md, section 1): one YAML document describing services,
process hosts, routers, endpoints and process functions.

Every problem is a ConfigError naming the entry and the field, raised before
anything binds a port.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from typing import Any, Callable

import yaml

from ._core.units import parse_duration
from .app import DEFAULT_PRESENCE_MAX_MEMBERS, App, qualify
from .errors import ConfigError
from .settings import did_you_mean

SUPPORTED_VERSIONS = ("1.0",)

# kind -> (required fields, optional fields); name/kind/namespace are common.
_KINDS: dict[str, tuple[set[str], set[str]]] = {
    "http.service": (set(), {"addr", "meta"}),
    "process.host": (set(), {"meta"}),
    "http.router": ({"meta"}, {"prefix", "pre_middleware", "pre_options", "post_middleware", "post_options"}),
    "http.endpoint": ({"meta", "path", "func"}, {"method"}),
    "process.function": ({"func"}, {"meta"}),
    "channel.namespace": ({"pattern"}, {"history_size", "history_ttl", "presence", "join_leave",
                                           "presence_max_members"}),
}
_COMMON = {"name", "kind", "namespace"}
_TOP_LEVEL = ("version", "namespace", "entries")
# Entries are declared in this order, whatever their order in the file.
_ORDER = ["http.service", "process.host", "http.router", "http.endpoint", "process.function", "channel.namespace"]


def load_app(path: str) -> App:
    """The App described by the YAML file at ``path``. The file's directory
    goes on the import path, so an app is a folder: YAML plus modules."""
    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return build_app(document)


def build_app(document: Any) -> App:
    if not isinstance(document, dict):
        raise ConfigError("the file must be a mapping with 'version', 'namespace' and 'entries'")
    unknown = sorted(str(field) for field in set(document) - set(_TOP_LEVEL))
    if unknown:
        raise ConfigError(f"unknown top-level field {unknown[0]!r}{did_you_mean(unknown[0], _TOP_LEVEL)}")
    version = str(document.get("version", ""))
    if version not in SUPPORTED_VERSIONS:
        raise ConfigError(f"unsupported version {document.get('version')!r}; supported: {SUPPORTED_VERSIONS}")
    namespace = document.get("namespace", "app")
    if not isinstance(namespace, str) or not namespace or ":" in namespace:
        raise ConfigError(f"namespace must be a non-empty string without ':', got {namespace!r}")
    entries = document.get("entries")
    if not isinstance(entries, list):
        raise ConfigError("'entries' must be a list")

    app = App(namespace)
    checked = [_check_entry(i, entry, namespace) for i, entry in enumerate(entries)]
    seen: set[str] = set()
    for eid, _, _ in checked:
        if eid in seen:
            raise ConfigError("declared twice", eid)
        seen.add(eid)
    for kind in _ORDER:
        for eid, ns, entry in checked:
            if entry["kind"] == kind:
                _declare(app, eid, ns, entry)
    app.check()
    return app


def _check_entry(index: int, entry: Any, namespace: str) -> tuple[str, str, dict]:
    if not isinstance(entry, dict):
        raise ConfigError(f"entry #{index + 1} must be a mapping")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"entry #{index + 1} needs a 'name'", f"#{index + 1}", "name")
    ns = entry.get("namespace", namespace)
    if not isinstance(ns, str) or not ns:
        raise ConfigError("namespace must be a non-empty string", name, "namespace")
    eid = f"{ns}:{name}"
    kind = entry.get("kind")
    if kind not in _KINDS:
        raise ConfigError(f"unknown kind {kind!r}{did_you_mean(str(kind), sorted(_KINDS))}", eid, "kind")
    required, optional = _KINDS[kind]
    for field in sorted(required):
        if field not in entry:
            raise ConfigError(f"missing required field for kind {kind}", eid, field)
    known = required | optional | _COMMON
    for field in entry:
        if field not in known:
            raise ConfigError(f"unknown field for kind {kind}{did_you_mean(str(field), sorted(known))}", eid, field)
    return eid, ns, entry


def _meta(eid: str, entry: dict, key: str, ns: str) -> str:
    meta = entry.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get(key), str):
        raise ConfigError(f"meta.{key} must name an entry", eid, f"meta.{key}")
    return qualify(ns, meta[key])


def _string(eid: str, entry: dict, field: str, default: Any = None) -> Any:
    value = entry.get(field, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"must be a string, got {type(value).__name__}", eid, field)
    return value


def _names(eid: str, entry: dict, field: str) -> list[str]:
    value = entry.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("must be a list of middleware names", eid, field)
    return value


def _options(eid: str, entry: dict, field: str) -> dict:
    value = entry.get(field, {})
    if not isinstance(value, dict):
        raise ConfigError("must be a mapping of option names to values", eid, field)
    return value


def _declare(app: App, eid: str, ns: str, entry: dict) -> None:
    kind = entry["kind"]
    if kind == "http.service":
        app.service(eid, _string(eid, entry, "addr", "127.0.0.1:8080"))
    elif kind == "process.host":
        app.process_host(eid)
    elif kind == "http.router":
        app.router(
            eid,
            _meta(eid, entry, "server", ns),
            _string(eid, entry, "prefix", ""),
            _names(eid, entry, "pre_middleware"),
            _options(eid, entry, "pre_options"),
            _names(eid, entry, "post_middleware"),
            _options(eid, entry, "post_options"),
        )
    elif kind == "http.endpoint":
        rid = _meta(eid, entry, "router", ns)
        router = app.routers.get(rid)
        if router is None:
            raise ConfigError(f"no http.router {rid!r} is declared", eid, "meta.router")
        func = _import(eid, _string(eid, entry, "func"))
        router.endpoint(_string(eid, entry, "method", "GET"), _string(eid, entry, "path"), func, eid)
    elif kind == "process.function":
        func = _import(eid, _string(eid, entry, "func"))
        if not asyncio.iscoroutinefunction(func):
            raise ConfigError(f"{entry['func']} must be an 'async def' function", eid, "func")
        app.process_function(eid, func)
    elif kind == "channel.namespace":
        ttl = entry.get("history_ttl", 0)
        if isinstance(ttl, str):
            try:
                ttl = parse_duration(ttl)
            except ValueError as exc:
                raise ConfigError(str(exc), eid, "history_ttl") from None
        app.channel_namespace(eid, _string(eid, entry, "pattern"),
                              entry.get("history_size", 0), ttl, entry.get("presence", False),
                              entry.get("join_leave", False),
                              entry.get("presence_max_members", DEFAULT_PRESENCE_MAX_MEMBERS))
    else:  # pragma: no cover - _check_entry refuses other kinds
        raise ConfigError(f"unknown kind {kind!r}", eid, "kind")


def _import(eid: str, target: str) -> Callable[..., Any]:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{target!r} must look like 'module:function'", eid, "func")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"cannot import module {module_name!r}: {exc}", eid, "func") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no {attr!r}", eid, "func") from None
    if not callable(obj):
        raise ConfigError(f"{target!r} is not callable", eid, "func")
    return obj
