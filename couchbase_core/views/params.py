"""View query parameters and how they are encoded (spec/http-services.md §2.1).

:class:`Query` holds the parameters of a view query and encodes them for the
URL: JSON for keys (``key``, ``keys``, ``startkey``, ``endkey``), raw text
for document ids (``startkey_docid``, ``endkey_docid``), ``true``/``false``
for booleans, decimal for integers. Unknown parameters are refused unless
``unrecognized_ok`` (or ``passthrough``, which also sends string values
of known parameters verbatim) is given. When the encoded query
is longer than 2048 characters, ``keys`` travel in a POST body instead.

The 2.x conveniences are kept: ``mapkey_single`` (``key``),
``mapkey_multi`` (``keys``), ``mapkey_range=[start, end]``
(``startkey``/``endkey``), ``dockey_range=[start, end]``
(``startkey_docid``/``endkey_docid``).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

from couchbase_core.exceptions import ArgumentError

__all__ = ["Query", "ViewQuery", "SpatialQuery", "make_options_string", "make_dvpath", "STALE_OK",
           "STALE_UPDATE_BEFORE", "STALE_UPDATE_AFTER", "ONERROR_CONTINUE", "ONERROR_STOP", "UNSPEC",
           "MAX_URI_LENGTH", "ulp"]

#: ``stale=ok``: use the index as it is.
STALE_OK = "ok"
#: ``stale=false``: update the index before answering.
STALE_UPDATE_BEFORE = "false"
#: ``stale=update_after``: answer, then update (the server's default).
STALE_UPDATE_AFTER = "update_after"
#: ``on_error=continue`` / ``stop``.
ONERROR_CONTINUE = "continue"
ONERROR_STOP = "stop"

#: Longer query strings move ``keys`` into a POST body.
MAX_URI_LENGTH = 2048


class _Unspec:
    """A parameter that is not set."""

    def __repr__(self) -> str:
        return "UNSPEC"

    def __bool__(self) -> bool:
        return False


#: Marks a parameter as not set (also: pass ``None``).
UNSPEC = _Unspec()


class ulp:
    """An *unquoted literal parameter* (2.x ``couchbase.views.params.ulp``):
    its ``value``, a ``str``, is sent as the parameter's text as it is,
    without JSON encoding, e.g. ``Query(startkey=ulp('["a",1]'))`` when the
    key is JSON text already. No check is made that it is valid JSON."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise ArgumentError("ulp() takes the parameter's text (a str), not %s" % type(value).__name__)
        self.value = value

    def __repr__(self) -> str:
        return "ulp(%r)" % (self.value,)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ulp) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("ulp", self.value))


def _bool(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return "true" if value else "false"
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower()
    raise ArgumentError("view parameter %s must be a boolean, not %r" % (name, value))


def _int(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return value
        raise ArgumentError("view parameter %s must be an integer, not %r" % (name, value))
    if value < 0:
        raise ArgumentError("view parameter %s must not be negative" % name)
    return str(value)


def _json(name: str, value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)  # NaN/Infinity are not JSON
    except (TypeError, ValueError) as exc:
        raise ArgumentError("view parameter %s is not JSON-serialisable: %s" % (name, exc)) from exc


def _json_list(name: str, value: Any) -> str:
    if not isinstance(value, (list, tuple)):
        raise ArgumentError("view parameter %s must be a list of keys" % name)
    return _json(name, list(value))


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ArgumentError("view parameter %s must be a str, not %r" % (name, value))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ArgumentError("view parameter %s %r has no UTF-8 form: %s" % (name, value, exc.reason)) from None
    return value


def _stale(name: str, value: Any) -> str:
    if value is True:
        return STALE_OK
    if value is False:
        return STALE_UPDATE_BEFORE
    if value in (STALE_OK, STALE_UPDATE_BEFORE, STALE_UPDATE_AFTER):
        return value
    raise ArgumentError("stale must be True/False or 'ok', 'false', 'update_after' (got %r)" % (value,))


def _on_error(name: str, value: Any) -> str:
    if value in (ONERROR_CONTINUE, ONERROR_STOP):
        return value
    raise ArgumentError("on_error must be 'continue' or 'stop' (got %r)" % (value,))


def _millis(name: str, value: Any) -> str:
    return _int(name, value)


_ENCODERS = {
    "key": _json, "keys": _json_list, "startkey": _json, "endkey": _json,
    "startkey_docid": _string, "endkey_docid": _string,
    "inclusive_end": _bool, "descending": _bool, "reduce": _bool, "group": _bool,
    "full_set": _bool, "debug": _bool,
    "limit": _int, "skip": _int, "group_level": _int, "connection_timeout": _millis,
    "stale": _stale, "on_error": _on_error,
}
_SPATIAL_ENCODERS = {
    "bbox": lambda n, v: ",".join(str(float(x)) for x in v) if isinstance(v, (list, tuple)) else _string(n, v),
    "start_range": _json_list, "end_range": _json_list,
    "limit": _int, "skip": _int, "stale": _stale, "connection_timeout": _millis, "debug": _bool,
}


class Query:
    """The parameters of a view query.

    Set them as keyword arguments (``Query(limit=10, stale=STALE_OK)``), as
    attributes, or with :meth:`update`. ``passthrough=True`` sends every
    string value exactly as given, known parameters included (as in 2.x: a
    ``key`` must then already be JSON, ``'"abc"'``), and other values of
    unknown parameters as ``str(value)``; ``unrecognized_ok=True`` sends
    unknown parameters JSON-encoded instead of refusing them.
    """

    _encoders = _ENCODERS

    def __init__(self, passthrough: bool = False, unrecognized_ok: bool = False, **params: Any) -> None:
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "passthrough", passthrough)
        object.__setattr__(self, "unrecognized_ok", unrecognized_ok)
        self.update(**params)

    # -- setting -----------------------------------------------------------

    def _set(self, name: str, value: Any) -> None:
        params: Dict[str, Tuple[Any, str]] = self._params
        if value is None or value is UNSPEC:
            params.pop(name, None)
            return
        encoder = self._encoders.get(name)
        if isinstance(value, ulp):  # unquoted literal: sent as given
            params[name] = (value, _string(name, value.value))
        elif self.passthrough and isinstance(value, str):
            params[name] = (value, value)  # already in the server's syntax
        elif encoder is not None:
            params[name] = (value, encoder(name, value))
        elif self.passthrough:
            params[name] = (value, str(value))
        elif self.unrecognized_ok:
            params[name] = (value, _json(name, value))
        else:
            raise ArgumentError("unknown view parameter %r (known: %s; or pass unrecognized_ok=True)"
                                % (name, ", ".join(sorted(self._encoders))))

    def update(self, copy: bool = False, **params: Any) -> "Query":
        """Set parameters (returns a modified copy with ``copy=True``)."""
        target = self._copy() if copy else self
        for name, value in params.items():
            if name == "mapkey_single":
                target._set("key", value)
            elif name == "mapkey_multi":
                target._set("keys", value)
            elif name == "mapkey_range":
                target._range("startkey", "endkey", value)
            elif name == "dockey_range":
                target._range("startkey_docid", "endkey_docid", value)
            else:
                target._set(name, value)
        return target

    def _range(self, start: str, end: str, value: Any) -> None:
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 2:
            raise ArgumentError("a range is [start] or [start, end]")
        self._set(start, value[0])
        if len(value) == 2:
            self._set(end, value[1])

    def _copy(self) -> "Query":
        other = type(self)(self.passthrough, self.unrecognized_ok)
        other._params.update(self._params)
        return other

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("passthrough", "unrecognized_ok"):
            object.__setattr__(self, name, value)
        else:
            self.update(**{name: value})

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("_params", {})
        if name in params:
            return params[name][0]
        if name in self._encoders:
            return UNSPEC
        raise AttributeError(name)

    # -- encoding ------------------------------------------------------------

    @property
    def encoded(self) -> str:
        """The URL query string (without ``?``)."""
        return "&".join("%s=%s" % (name, quote(text, safe="")) for name, (_v, text) in self._params.items())

    def encoded_for_request(self) -> Tuple[str, Optional[bytes]]:
        """(query string, POST body or None): ``keys`` move to a JSON body
        when the query string would exceed :data:`MAX_URI_LENGTH`."""
        full = self.encoded
        if len(full) <= MAX_URI_LENGTH or "keys" not in self._params:
            return full, None
        keys = self._params["keys"][0]
        rest = "&".join("%s=%s" % (name, quote(text, safe="")) for name, (_v, text) in self._params.items()
                        if name != "keys")
        return rest, json.dumps({"keys": list(keys)}, separators=(",", ":")).encode("utf-8")

    @property
    def params(self) -> Dict[str, Any]:
        """The parameters as given."""
        return {name: value for name, (value, _t) in self._params.items()}

    def __repr__(self) -> str:
        return "%s(%s)" % (type(self).__name__, self.encoded)


ViewQuery = Query


class SpatialQuery(Query):
    """Parameters of a spatial view query (``bbox``, ``start_range``,
    ``end_range``, ``limit``, ``skip``, ``stale``...)."""

    _encoders = _SPATIAL_ENCODERS


def make_options_string(input: Dict[str, Any], unrecognized_ok: bool = False,  # noqa: A002
                        passthrough: bool = False) -> str:
    """Encode a dict of view parameters as a query string."""
    if isinstance(input, Query):
        return input.encoded
    return Query(passthrough=passthrough, unrecognized_ok=unrecognized_ok, **input).encoded


def make_dvpath(doc: str, view: str) -> str:
    """``_design/<doc>/_view/<view>?``."""
    return "_design/%s/_view/%s?" % (doc, view)


def _names() -> List[str]:  # pragma: no cover - documentation helper
    return sorted(_ENCODERS)
