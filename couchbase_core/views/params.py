"""View query parameters and how they are encoded, byte for byte as 2.x.

A :class:`Query` (``ViewQuery``) or :class:`SpatialQuery` holds the
parameters of a view query; :attr:`QueryBase.encoded` is the URL query
string. The rules are the 2.x SDK's (spec/http-services.md §2.1 says what
the server reads):

* booleans (``descending``, ``reduce``, ``group``, ``inclusive_end``,
  ``full_set``, ``debug``): ``True``/``False``, a number (its truth) or
  exactly ``'true'``/``'false'``;
* numbers (``limit``, ``skip``, ``group_level``, ``connection_timeout``):
  ``str(int(value))``, so ``'10'`` and ``3.7`` are accepted (``3``) and
  bools refused;
* ``stale``: ``STALE_OK``/``STALE_UPDATE_BEFORE``/``STALE_UPDATE_AFTER``,
  or a boolean as above (true: ``ok``, false: ``false``);
* ``on_error``: ``ONERROR_CONTINUE`` or ``ONERROR_STOP``;
* keys (``key``, ``startkey``, ``endkey``; ``keys``, ``start_range``,
  ``end_range`` as arrays): ``json.dumps(value)`` (so ``None`` is
  ``null``, a real key);
* document ids (``startkey_docid``, ``endkey_docid``): the str, or a
  number's ``str()``.

``None`` is a value, not "unset" (only :data:`UNSPEC` unsets): it is the
key ``null`` for JSON parameters and an ArgumentError for the others.
Names and values are then percent-encoded with ``/`` left as is
(``urllib.parse.quote``). With ``passthrough=True`` values are taken as
already encoded: str (or a number's ``str()``) sent verbatim, unquoted.
Unknown parameters are refused unless ``unrecognized_ok=True``; they are
then sent as given (str, or a number's ``str()``), unquoted, after the
known ones.

When the encoded query is longer than :data:`MAX_URI_LENGTH`, ``keys``
travel in a POST body (:meth:`QueryBase.encoded_for_request`).
"""

from __future__ import annotations

import copy as _copy
import json
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import quote

from couchbase_core.exceptions import ArgumentError

__all__ = ["Query", "ViewQuery", "SpatialQuery", "QueryBase", "Params", "make_options_string", "make_dvpath",
           "STALE_OK", "STALE_UPDATE_BEFORE", "STALE_UPDATE_AFTER", "ONERROR_CONTINUE", "ONERROR_STOP",
           "UNSPEC", "MAX_URI_LENGTH", "ulp"]

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
    """A parameter that is not set (false, prints as empty text)."""

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return ""

    def __repr__(self) -> str:
        return "<Placeholder>"

    def __copy__(self) -> "_Unspec":
        return self

    def __deepcopy__(self, _memo: Any) -> "_Unspec":
        return self


#: Marks a parameter as not set; assigning it removes the parameter.
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


def _refuse(message: str, value: Any) -> ArgumentError:
    return ArgumentError({"message": "%s (got %r)" % (message, value), "objextra": value})


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _refuse("a view parameter must have a UTF-8 form (%s)" % exc.reason, text) from None
    return text


def _is_number(value: Any) -> bool:
    """What 2.x tested with ``value + 0``: a number, bools included."""
    try:
        value + 0
    except TypeError:
        return False
    return not isinstance(value, (str, bytes))


def _bool_param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if value not in ("true", "false"):
            raise _refuse("a string for a boolean must be 'true' or 'false'", value)
        return value
    if _is_number(value):
        return "true" if value else "false"
    raise _refuse("a boolean must be a bool, a number, or 'true'/'false'", value)


def _num_param(value: Any) -> str:
    if isinstance(value, bool):
        raise _refuse("booleans are not numbers here", value)
    try:
        return str(int(value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ArgumentError({"message": "expected a numeric argument (got %r)" % (value,), "objextra": value,
                             "inner_cause": exc}) from exc


def _string_param(value: Any) -> str:
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, bool):
        raise _refuse("a boolean cannot be used as a string", value)
    if isinstance(value, (int, float)):
        return str(value)
    raise _refuse("expected a string or a simple number", value)


def _ulp_param(value: "ulp") -> str:
    return _utf8(value.value)


def _stale_param(value: Any) -> str:
    if isinstance(value, str) and value in (STALE_UPDATE_AFTER, STALE_OK, STALE_UPDATE_BEFORE):
        return value
    text = _bool_param(value)
    return STALE_OK if text == "true" else text


def _onerror_param(value: Any) -> str:
    if not (isinstance(value, str) and value in (ONERROR_CONTINUE, ONERROR_STOP)):
        raise _refuse("on_error must be 'continue' or 'stop'", value)
    return value


def _json_param(value: Any) -> str:
    try:
        # 2.x's json.dumps defaults (", " and ": " separators, ASCII
        # escapes); NaN and the infinities are refused: they are not JSON
        # and the view engine would reject the query.
        return _utf8(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ArgumentError({"message": "could not convert the value to JSON: %s" % exc, "objextra": value,
                             "inner_cause": exc}) from exc


def _json_array_param(value: Any) -> str:
    text = _json_param(value)
    if not text.startswith("["):
        raise _refuse("the value must convert to a JSON array", value)
    return text


def _bbox_param(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        if len(value) != 4:
            raise _refuse("bbox is four numbers", value)
        return ",".join(_string_param(float(x) if _is_number(x) and not isinstance(x, bool) else x)
                        for x in value)
    return _string_param(value)


class Params:
    """The names of the view parameters."""

    DESCENDING = "descending"
    STARTKEY = "startkey"
    STARTKEY_DOCID = "startkey_docid"
    ENDKEY = "endkey"
    ENDKEY_DOCID = "endkey_docid"
    KEY = "key"
    KEYS = "keys"
    INCLUSIVE_END = "inclusive_end"
    GROUP = "group"
    GROUP_LEVEL = "group_level"
    REDUCE = "reduce"
    SKIP = "skip"
    LIMIT = "limit"
    ON_ERROR = "on_error"
    STALE = "stale"
    DEBUG = "debug"
    CONNECTION_TIMEOUT = "connection_timeout"
    FULL_SET = "full_set"
    MAPKEY_SINGLE = "mapkey_single"
    MAPKEY_MULTI = "mapkey_multi"
    MAPKEY_RANGE = "mapkey_range"
    DOCKEY_RANGE = "dockey_range"
    START_RANGE = "start_range"
    END_RANGE = "end_range"
    BBOX = "bbox"


#: Every parameter name a query class may have (its properties).
_PARAM_NAMES = frozenset(v for k, v in vars(Params).items() if k.isupper())

#: parameter name -> encoder of its value (the server's syntax).
_HANDLERS: Dict[str, Callable[[Any], str]] = {
    Params.DESCENDING: _bool_param,
    Params.STARTKEY: _json_param,
    Params.STARTKEY_DOCID: _string_param,
    Params.ENDKEY: _json_param,
    Params.ENDKEY_DOCID: _string_param,
    Params.FULL_SET: _bool_param,
    Params.GROUP: _bool_param,
    Params.GROUP_LEVEL: _num_param,
    Params.INCLUSIVE_END: _bool_param,
    Params.KEY: _json_param,
    Params.KEYS: _json_array_param,
    Params.ON_ERROR: _onerror_param,
    Params.REDUCE: _bool_param,
    Params.STALE: _stale_param,
    Params.SKIP: _num_param,
    Params.LIMIT: _num_param,
    Params.DEBUG: _bool_param,
    Params.CONNECTION_TIMEOUT: _num_param,
    Params.START_RANGE: _json_array_param,
    Params.END_RANGE: _json_array_param,
}


def _param(name: str) -> property:
    def getter(self: "QueryBase") -> Any:
        return self._get_common(name)

    def setter(self: "QueryBase", value: Any) -> None:
        self._set_common(name, value)

    return property(getter, setter, doc="The ``%s`` parameter (UNSPEC when not set)." % name)


def _range(sugar: str, start: str, end: str) -> property:
    def getter(self: "QueryBase") -> Any:
        return self._user_options.get(sugar, UNSPEC)

    def setter(self: "QueryBase", value: Any) -> None:
        self._set_range_common(sugar, start, end, value)

    return property(getter, setter, doc="``[%s, %s]`` in one value: ``[start]`` or ``[start, end]``."
                    % (start, end))


class QueryBase:
    """The parameters common to map and spatial view queries (see the
    module docs for the encoding rules).

    Args:
        passthrough: values are already in the server's syntax: sent
            verbatim (str, or a number's ``str()``), not checked, not quoted.
        unrecognized_ok: accept parameters this class does not know; they
            are sent as given (str, or a number's ``str()``), unquoted.
        **params: parameter values.

    Raises:
        ArgumentError: an unknown parameter (without ``unrecognized_ok``), a
            bad value, or a range combined with its start/end parameters.
    """

    #: The highest character worth putting at the end of a string range.
    STRING_RANGE_END = "\u0fff"

    def __init__(self, passthrough: bool = False, unrecognized_ok: bool = False, **params: Any) -> None:
        self.passthrough = passthrough
        self.unrecognized_ok = unrecognized_ok
        #: name -> encoded text, in the order first set
        self._real_options: Dict[str, str] = {}
        #: name -> the value as given
        self._user_options: Dict[str, Any] = {}
        #: unknown name -> text sent as is
        self._extra_options: Dict[str, str] = {}
        #: text sent before everything (see from_any)
        self._base_str = ""
        self.update(**params)

    # -- setting -----------------------------------------------------------

    def _set_common(self, param: str, value: Any, set_user: bool = True) -> None:
        if value is UNSPEC:
            self._real_options.pop(param, None)
            if set_user:
                self._user_options.pop(param, None)
            return
        handler = _HANDLERS.get(param)
        if handler is None:
            if not self.unrecognized_ok:
                raise ArgumentError("unrecognized view parameter %r: to send unknown parameters, set "
                                    "unrecognized_ok=True" % (param,))
            self._extra_options[param] = _string_param(value.value if isinstance(value, ulp) else value)
            return
        if isinstance(value, ulp):  # an unquoted literal: its text is sent as given
            handler = _ulp_param
        elif self.passthrough:
            handler = _string_param
        self._real_options[param] = handler(value)
        if set_user:
            self._user_options[param] = value

    def _get_common(self, param: str) -> Any:
        if param in self._user_options:
            return self._user_options[param]
        return self._real_options.get(param, UNSPEC)

    def _set_range_common(self, sugar: str, start: str, end: str, value: Any) -> None:
        if not isinstance(value, (list, tuple, _Unspec)):
            raise ArgumentError("the range %s must be a list, a tuple or UNSPEC, not %r" % (sugar, value))
        if self._user_options.get(start, UNSPEC) is not UNSPEC or self._user_options.get(end, UNSPEC) is not UNSPEC:
            raise ArgumentError("cannot specify %s with either %s or %s" % (sugar, start, end))
        if not value:
            self._set_common(start, UNSPEC, set_user=False)
            self._set_common(end, UNSPEC, set_user=False)
            self._user_options[sugar] = UNSPEC
            return
        if len(value) not in (1, 2):
            raise _refuse("a range has one or two elements", value)
        bounds = list(value) + [UNSPEC] * (2 - len(value))
        self._set_common(start, bounds[0], set_user=False)
        self._set_common(end, bounds[1], set_user=False)
        self._user_options[sugar] = bounds

    def update(self, copy: bool = False, **params: Any) -> "QueryBase":
        """Set parameters; returns the query (a modified deep copy with
        ``copy=True``).

        Raises:
            ArgumentError: as the constructor.
        """
        target = _copy.deepcopy(self) if copy else self
        for name, value in params.items():
            if name in ("passthrough", "unrecognized_ok"):
                setattr(target, name, value)
            elif name in _PARAM_NAMES and isinstance(getattr(type(target), name, None), property):
                setattr(target, name, value)
            else:
                if not target.unrecognized_ok:
                    raise ArgumentError("unknown view option %r (known: %s; or pass unrecognized_ok=True)"
                                        % (name, ", ".join(target._known())))
                target._set_common(name, value)
        return target

    @classmethod
    def _known(cls) -> list:
        return sorted(n for n in _PARAM_NAMES if isinstance(getattr(cls, n, None), property))

    @classmethod
    def from_any(cls, params: Any, **ctor_opts: Any) -> "QueryBase":
        """A new query from ``params``: a query (deep-copied), a dict of
        parameters (with ``ctor_opts`` for the constructor; from
        :class:`QueryBase` itself, a spatial query when it holds
        ``bbox``/``start_range``/``end_range``), or a str sent verbatim
        before the other parameters.

        Raises:
            ArgumentError: for anything else.
        """
        if isinstance(params, QueryBase):
            return _copy.deepcopy(params)
        if isinstance(params, dict):
            options = dict(ctor_opts)
            options.update(params)
            target: type = cls
            if cls is QueryBase:
                spatial = any(k in params for k in ("bbox", "start_range", "end_range"))
                target = SpatialQuery if spatial else ViewQuery
            return target(**options)
        if isinstance(params, str):
            made = cls(**ctor_opts)
            made._base_str = _utf8(params)
            return made
        raise ArgumentError("view parameters must be a Query, a dict or a str, not %s" % type(params).__name__)

    @classmethod
    def from_string(cls, qstr: str) -> "QueryBase":
        """:meth:`from_any` for a query string."""
        return cls.from_any(qstr)

    # -- encoding ------------------------------------------------------------

    def _encode(self, omit_keys: bool = False) -> str:
        pieces = []
        for name, text in self._real_options.items():
            if omit_keys and name == Params.KEYS:
                continue
            if not self.passthrough:
                name, text = quote(name), quote(text)
            pieces.append("%s=%s" % (name, text))
        pieces.extend("%s=%s" % item for item in self._extra_options.items())
        return "&".join(pieces)

    @property
    def encoded(self) -> str:
        """The URL query string (without ``?``)."""
        encoded = self._encode()
        if self._base_str:
            return "&".join((self._base_str, encoded))
        return encoded

    @property
    def _long_query_encoded(self) -> Tuple[str, str]:
        """(query string without ``keys``, POST body ``{"keys":...}``)."""
        keys = self._real_options.get(Params.KEYS)
        body = '{"keys":%s}' % keys if keys is not None else "{}"
        uri = self._encode(omit_keys=True)
        if self._base_str:
            uri = "&".join((self._base_str, uri))
        return uri, body

    def encoded_for_request(self) -> Tuple[str, Optional[bytes]]:
        """(query string, POST body or None): ``keys`` move to a JSON body
        when the query string would exceed :data:`MAX_URI_LENGTH`."""
        full = self.encoded
        if len(full) <= MAX_URI_LENGTH or Params.KEYS not in self._real_options:
            return full, None
        uri, body = self._long_query_encoded
        return uri, body.encode("utf-8")

    @property
    def has_blob(self) -> bool:
        """Whether the query holds text this class did not check
        (passthrough, unrecognized_ok, or a string from :meth:`from_any`)."""
        return bool(self._base_str or self.unrecognized_ok or self.passthrough)

    @property
    def params(self) -> Dict[str, Any]:
        """The parameters set, as given (unknown ones as sent)."""
        out = {name: self._user_options.get(name, text) for name, text in self._real_options.items()}
        out.update(self._extra_options)
        return out

    def __repr__(self) -> str:
        return "Query:'%s'" % self.encoded

    # -- the parameters of every view ---------------------------------------

    stale = _param(Params.STALE)
    skip = _param(Params.SKIP)
    limit = _param(Params.LIMIT)
    full_set = _param(Params.FULL_SET)
    connection_timeout = _param(Params.CONNECTION_TIMEOUT)
    debug = _param(Params.DEBUG)
    on_error = _param(Params.ON_ERROR)


class ViewQuery(QueryBase):
    """The parameters of a map/reduce view query."""

    descending = _param(Params.DESCENDING)
    startkey = _param(Params.STARTKEY)
    endkey = _param(Params.ENDKEY)
    startkey_docid = _param(Params.STARTKEY_DOCID)
    endkey_docid = _param(Params.ENDKEY_DOCID)
    keys = _param(Params.KEYS)
    key = _param(Params.KEY)
    inclusive_end = _param(Params.INCLUSIVE_END)
    reduce = _param(Params.REDUCE)
    group = _param(Params.GROUP)
    group_level = _param(Params.GROUP_LEVEL)
    # the 2.x conveniences
    mapkey_single = _param(Params.KEY)
    mapkey_multi = _param(Params.KEYS)
    mapkey_range = _range(Params.MAPKEY_RANGE, Params.STARTKEY, Params.ENDKEY)
    dockey_range = _range(Params.DOCKEY_RANGE, Params.STARTKEY_DOCID, Params.ENDKEY_DOCID)


def _bbox() -> property:
    # Sent like 2.x sent it (with unrecognized_ok): text, unquoted, after
    # the other parameters.
    def getter(self: "QueryBase") -> Any:
        return self._user_options.get(Params.BBOX, UNSPEC)

    def setter(self: "QueryBase", value: Any) -> None:
        if value is UNSPEC:
            self._extra_options.pop(Params.BBOX, None)
            self._user_options.pop(Params.BBOX, None)
            return
        self._extra_options[Params.BBOX] = _bbox_param(value)
        self._user_options[Params.BBOX] = value

    return property(getter, setter, doc="The ``bbox`` parameter: four numbers or their ``'a,b,c,d'`` text.")


class SpatialQuery(QueryBase):
    """The parameters of a spatial view query: ``start_range``,
    ``end_range`` (JSON arrays), and ``bbox`` (four numbers, or their
    ``"a,b,c,d"`` text; an addition to 2.x, where it had to be passed
    with ``unrecognized_ok``, and is sent the same way)."""

    start_range = _param(Params.START_RANGE)
    end_range = _param(Params.END_RANGE)
    bbox = _bbox()


class Query(ViewQuery):
    """A map/reduce view query (the name most code uses)."""


def make_options_string(input: Any, unrecognized_ok: bool = False,  # noqa: A002 - 2.x's name
                        passthrough: bool = False) -> str:
    """The query string of ``input``: a query, a dict of parameters or a str
    (see :meth:`QueryBase.from_any`)."""
    if not isinstance(input, QueryBase):
        input = QueryBase.from_any(input, unrecognized_ok=unrecognized_ok, passthrough=passthrough)
    return input.encoded


def make_dvpath(doc: str, view: str) -> str:
    """``_design/<doc>/_view/<view>?``."""
    return "_design/%s/_view/%s?" % (doc, view)
