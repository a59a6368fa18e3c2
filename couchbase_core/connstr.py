"""Parsing, inspecting and rebuilding Couchbase connection strings.

A connection string names the cluster to contact, the bucket to open and a
set of client options, in one URL-like line::

    conn-string = [ scheme "://" ] host-list [ "/" bucket ] [ "?" options ]
    scheme      = "couchbase" / "couchbases" / "http" / "memcached"
    host-list   = [ host-entry *( ( "," / ";" ) host-entry ) ]
    host-entry  = host [ ":" port ] [ "=" proto ]
    host        = reg-name / "[" IPv6address "]"
    proto       = "mcd" / "mcds" / "http" / "https"      ; case-insensitive
    bucket      = one path segment (no further "/")
    options     = option *( "&" option )
    option      = name "=" value

How the pieces are read:

* The scheme is case-insensitive. A string without ``scheme://`` is read as
  an ``http://`` host list (the pre-2.0 form), so :attr:`scheme` is then
  ``'http'``.
* The string is first cut at its structural characters (``?``, then the
  first ``/``, then ``,``/``;``/``&``/``=``/``:``), and only then is every
  piece percent-decoded. A literal ``/`` in a bucket name is therefore
  written ``%2F``, a literal ``&`` in an option value ``%26``, and so on.
  ``+`` is *not* a space.
* Empty host entries (``a,,b`` or a trailing ``,``) and empty options
  (``a=1&&b=2``) are skipped; surrounding blanks around a host entry are
  stripped. If no host remains, the host list is ``localhost``.
* IPv6 literals must be bracketed (``[::1]:11210``) and are stored without
  the brackets; a zone identifier is written ``%25`` (``[fe80::1%25eth0]``).
* An empty path (``couchbase://h/``) means "no bucket given".

Everything else -- an unknown scheme or protocol, a bad port, a lone
bracket, a bare ``:port``, ``user@host``, an option without ``=``, a
malformed ``%`` escape, a second path segment, a bad value for a known
option -- raises :class:`~couchbase_core.exceptions.ArgumentError`.

The parsed object has the 2.x shape (:class:`ConnectionString`): ``hosts``
is a list of entry texts (``'host:port'``), ``options`` maps each name to
the list of its values (``parse_qs``'s form), ``bucket`` is ``''`` when
absent, and :meth:`~ConnectionString.encode` writes the text as 2.x did.

Options this client does not know are kept (readable through
:meth:`ConnectionString.get_option` and written back by
:meth:`ConnectionString.encode`) and reported once each by an
:class:`UnknownOptionWarning` when the string is parsed. Secret options
(:data:`SECRET_OPTIONS`) are left out of :meth:`~ConnectionString.encode`,
``str()`` and ``repr()`` unless explicitly requested, and never appear in
error messages.

See ``docs/connection-strings.md`` for the option reference and defaults.
"""

from __future__ import annotations

import ipaddress
import math
import re
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple, Union
from urllib.parse import quote, unquote

from couchbase_core.exceptions import ArgumentError, OptionIgnoredWarning

__all__ = [
    "ConnectionString",
    "Host",
    "UnknownOptionWarning",
    "OptionIgnoredWarning",
    "MAX_TIMEOUT",
    "KNOWN_OPTIONS",
    "SECRET_OPTIONS",
    "SCHEMES",
    "PROTOCOLS",
    "parse_duration",
    "parse_bool",
    "parse_int",
    "convert_1x_args",
    "parse_ratio",
]

#: Schemes accepted before ``://``.
SCHEMES = frozenset({"couchbase", "couchbases", "http", "memcached"})

#: Protocols accepted in the ``host:port=proto`` form (compared lowercased).
PROTOCOLS = frozenset({"mcd", "mcds", "http", "https"})

#: Option names whose values are never shown unless asked for explicitly.
SECRET_OPTIONS = frozenset({"password"})

#: Every option name this client understands; others are kept but warned about.
KNOWN_OPTIONS = frozenset({
    "operation_timeout", "timeout", "config_total_timeout", "config_node_timeout",
    "views_timeout", "n1ql_timeout", "query_timeout", "http_timeout",
    "durability_timeout", "durability_interval", "bootstrap_on", "certpath", "ssl",
    "username", "password", "compression", "fetch_mutation_tokens",
    "enable_mutation_tokens", "enable_tracing", "config_poll_interval",
    "retry_nmv_delay", "select_bucket", "tcp_nodelay", "tcp_keepalive",
    "sasl_mech_force", "http_poolsize", "detailed_errcodes", "client_string", "ipv6",
    "dnssrv", "network", "max_value_size", "connect_timeout", "keypath", "truststorepath",
    # 2.x / libcouchbase 2.9+ names (see docs/compat.md)
    "log_redaction", "config_cache", "compression_min_size", "compression_min_ratio",
    "tracing_threshold_kv", "tracing_threshold_n1ql", "tracing_threshold_view",
    "tracing_threshold_fts", "tracing_threshold_analytics", "tracing_threshold_queue_size",
    "tracing_threshold_queue_flush_interval", "tracing_orphaned_queue_size",
    "tracing_orphaned_queue_flush_interval",
    # ours: where and how long the DNS SRV lookup asks (docs/connection-strings.md)
    "dnssrv_nameserver", "dnssrv_timeout",
})

# Default ports, by transport security.
_KV_PLAIN, _KV_TLS, _KV_MEMCACHED = 11210, 11207, 11211
_HTTP_PLAIN, _HTTP_TLS = 8091, 18091


#: The largest timeout, interval or delay accepted anywhere, in seconds
#: (2147483 s, just under 24.9 days): the longest wait ``select``/``poll``/
#: ``epoll`` take in one call (2**31 - 1 milliseconds). Longer or infinite
#: values are an ArgumentError.
MAX_TIMEOUT = 2147483.0


class UnknownOptionWarning(OptionIgnoredWarning):
    """Issued by :meth:`ConnectionString.parse` for each option name not in
    :data:`KNOWN_OPTIONS`. The option is kept; it just has no effect here."""


class Host(NamedTuple):
    """One entry of a connection string's host list.

    Attributes:
        host: the host name or address, percent-decoded; IPv6 literals are
            stored without brackets.
        port: the port written after ``:``, or None when absent.
        proto: ``'mcd'``, ``'mcds'``, ``'http'`` or ``'https'`` when the
            entry used the ``host:port=proto`` form, else None.
    """

    host: str
    port: Optional[int] = None
    proto: Optional[str] = None


# --------------------------------------------------------------------------
# Option value helpers (also used by the engine to read options)
# --------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_UNIT_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNIT_SECONDS = {
    "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6,
    "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_INT_RE = re.compile(r"[+-]?[0-9]+")

_TRUE_WORDS = frozenset({"true", "on", "yes", "1"})
_FALSE_WORDS = frozenset({"false", "off", "no", "0"})


def _bad_value(name: str, value: Any, why: str) -> ArgumentError:
    shown = "<hidden>" if name in SECRET_OPTIONS else repr(value)
    return ArgumentError("invalid value %s for option '%s': %s" % (shown, name, why))


def parse_duration(value: Union[str, int, float], name: str) -> float:
    """Convert an option value to a duration in seconds.

    Accepts a non-negative int or float (seconds), a numeric string
    (``'2.5'``, ``'1e-3'``: seconds), or a string of number+unit parts with
    units ``us``, ``ms``, ``s``, ``m``, ``h`` (``'2500ms'``, ``'1.5s'``,
    ``'2m'``, also Go-style compounds such as ``'1m30s'``). Units are
    case-sensitive.

    Raises:
        ArgumentError: naming ``name``, for a negative, infinite, NaN or
            unreadable value, or one over :data:`MAX_TIMEOUT`.
    """
    if isinstance(value, bool):
        raise _bad_value(name, value, "a duration must be a number of seconds, not a bool")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        negative = text.startswith("-")
        if text.startswith(("+", "-")):
            text = text[1:]
        if _NUMBER_RE.fullmatch(text):
            seconds = float(text)
        else:
            pos = 0
            seconds = 0.0
            for match in _UNIT_PART_RE.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos == 0 or pos != len(text):
                raise _bad_value(
                    name, value,
                    "expected seconds ('2.5') or a number with a unit us/ms/s/m/h ('2500ms')")
        if negative:
            seconds = -seconds
    else:
        raise _bad_value(name, value, "expected a number or a string, not %s"
                         % type(value).__name__)
    if math.isnan(seconds) or math.isinf(seconds):
        raise _bad_value(name, value, "a duration must be finite")
    if seconds < 0:
        raise _bad_value(name, value, "a duration must not be negative")
    if seconds > MAX_TIMEOUT:
        raise _bad_value(name, value, "a duration must be at most %d seconds (MAX_TIMEOUT, about 24.8 days)"
                         % MAX_TIMEOUT)
    return seconds + 0.0  # normalise -0.0


def parse_bool(value: Union[str, int, bool], name: str) -> bool:
    """Convert an option value to a bool.

    Accepts a bool; an int (non-zero is True); or, case-insensitively, one of
    the strings ``true``/``false``, ``on``/``off``, ``yes``/``no``, ``1``/``0``.

    Raises:
        ArgumentError: naming ``name``, for anything else.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise _bad_value(name, value, "expected true/false, on/off, yes/no or 1/0")


def parse_int(value: Union[str, int], name: str, minimum: Optional[int] = None,
              maximum: Optional[int] = None) -> int:
    """Convert an option value to an int, optionally bounded (inclusive).

    Accepts an int (not a bool) or a string of decimal digits with an
    optional sign.

    Raises:
        ArgumentError: naming ``name``, for a non-integer or out-of-range value.
    """
    if isinstance(value, bool):
        raise _bad_value(name, value, "expected an integer, not a bool")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise _bad_value(name, value, "expected an integer")
    if minimum is not None and number < minimum:
        raise _bad_value(name, value, "must be at least %d" % minimum)
    if maximum is not None and number > maximum:
        raise _bad_value(name, value, "must be at most %d" % maximum)
    return number


def _check_choice(choices: Iterable[str]) -> Callable[[str, str], None]:
    allowed = sorted(choices)

    def check(value: str, name: str) -> None:
        if value.lower() not in allowed:
            raise _bad_value(name, value, "expected one of %s" % ", ".join(allowed))
    return check


def _check_duration(value: str, name: str) -> None:
    parse_duration(value, name)


def _check_bool(value: str, name: str) -> None:
    parse_bool(value, name)


def _check_mechs(value: str, name: str) -> None:
    mechs = value.split()
    if not mechs or not all(re.fullmatch(r"[A-Za-z0-9_-]+", m) for m in mechs):
        raise _bad_value(name, value, "expected a space-separated list of SASL mechanism names")


def _check_nonempty(value: str, name: str) -> None:
    if not value:
        raise _bad_value(name, value, "must not be empty")


def _check_anything(value: str, name: str) -> None:
    return None


def _check_poolsize(value: str, name: str) -> None:
    parse_int(value, name, minimum=0)


def _check_size(value: str, name: str) -> None:
    parse_int(value, name, minimum=1)


def _check_count(value: str, name: str) -> None:
    parse_int(value, name, minimum=0)


def parse_ratio(value: Union[str, int, float], name: str) -> float:
    """Convert an option value to a ratio: a number greater than 0 and at
    most 1 (``compression_min_ratio``).

    Raises:
        ArgumentError: naming ``name``, for anything else.
    """
    if isinstance(value, bool):
        raise _bad_value(name, value, "expected a number, not a bool")
    if isinstance(value, (int, float)):
        ratio = float(value)
    elif isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()):
        ratio = float(value.strip())
    else:
        raise _bad_value(name, value, "expected a number")
    if not 0.0 < ratio <= 1.0:
        raise _bad_value(name, value, "must be greater than 0 and at most 1")
    return ratio


def _check_ratio(value: str, name: str) -> None:
    parse_ratio(value, name)


_DURATION_OPTIONS = (
    "operation_timeout", "timeout", "config_total_timeout", "config_node_timeout",
    "views_timeout", "n1ql_timeout", "query_timeout", "http_timeout",
    "durability_timeout", "durability_interval", "config_poll_interval",
    "retry_nmv_delay", "connect_timeout", "dnssrv_timeout",
    "tracing_threshold_kv", "tracing_threshold_n1ql", "tracing_threshold_view",
    "tracing_threshold_fts", "tracing_threshold_analytics",
    "tracing_threshold_queue_flush_interval", "tracing_orphaned_queue_flush_interval",
)
_BOOL_OPTIONS = (
    "fetch_mutation_tokens", "enable_mutation_tokens", "enable_tracing",
    "select_bucket", "tcp_nodelay", "tcp_keepalive", "detailed_errcodes", "dnssrv",
    "log_redaction",
)

#: option name -> checker(value, name) raising ArgumentError on a bad value.
_VALIDATORS: Dict[str, Callable[[str, str], None]] = {
    **{n: _check_duration for n in _DURATION_OPTIONS},
    **{n: _check_bool for n in _BOOL_OPTIONS},
    "bootstrap_on": _check_choice({"all", "cccp", "http"}),
    "ssl": _check_choice({"on", "off", "no_verify"}),
    "compression": _check_choice({"on", "off", "inflate_only", "deflate_only", "force"}),
    "ipv6": _check_choice({"disabled", "allow", "only"}),
    "http_poolsize": _check_poolsize,
    "max_value_size": _check_size,
    "sasl_mech_force": _check_mechs,
    "certpath": _check_nonempty,
    "keypath": _check_nonempty,
    "truststorepath": _check_nonempty,
    "network": _check_nonempty,
    "dnssrv_nameserver": _check_nonempty,
    "username": _check_anything,
    "password": _check_anything,
    "client_string": _check_anything,
    "config_cache": _check_nonempty,
    "compression_min_size": _check_count,
    "compression_min_ratio": _check_ratio,
    "tracing_threshold_queue_size": _check_size,
    "tracing_orphaned_queue_size": _check_size,
}
assert set(_VALIDATORS) == KNOWN_OPTIONS


# --------------------------------------------------------------------------
# Lexical helpers
# --------------------------------------------------------------------------

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)?://")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PORT_RE = re.compile(r"[0-9]+")


def _check_utf8(text: str, what: str, secret: bool = False) -> None:
    """Refuse a str with no UTF-8 form (a lone surrogate): it could be
    neither sent nor printed (``encode()``, ``str()``, error messages)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        shown = "<hidden>" if secret else ascii(text)
        raise ArgumentError("%s %s has a character with no UTF-8 form (%s at position %d)"
                            % (what, shown, exc.reason, exc.start)) from None


def _decode(text: str, what: str, secret: bool = False) -> str:
    """Percent-decode ``text`` strictly (valid ``%XX`` escapes, UTF-8 result)."""
    if "%" not in text:
        return text
    shown = "<hidden>" if secret else repr(text)
    if _BAD_ESCAPE_RE.search(text):
        raise ArgumentError("bad percent-encoding in %s %s: '%%' must be followed by two "
                            "hex digits" % (what, shown))
    try:
        return unquote(text, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise ArgumentError("bad percent-encoding in %s %s: escapes do not form valid "
                            "UTF-8" % (what, shown)) from None


def _encode(text: str, safe: str = "") -> str:
    return quote(text, safe=safe, encoding="utf-8", errors="strict")


def _is_ipv6(host: str) -> bool:
    if ":" not in host:
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _parse_port(text: str, entry: str) -> int:
    if not text:
        raise ArgumentError("empty port after ':' in host %r" % entry)
    if not _PORT_RE.fullmatch(text):
        raise ArgumentError("invalid port %r in host %r: expected a number" % (text, entry))
    port = int(text)
    if not 1 <= port <= 65535:
        raise ArgumentError("port %d in host %r is out of range 1..65535" % (port, entry))
    return port


def _check_host_name(host: str, entry: str) -> None:
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in host):
        raise ArgumentError("invalid character (blank or control) in host %r" % entry)
    if ":" in host and not _is_ipv6(host):
        raise ArgumentError("invalid host %r: ':' is only allowed in a bracketed IPv6 "
                            "address" % entry)


def _parse_host_entry(entry: str) -> Host:
    """Parse one ``host[:port][=proto]`` entry (already stripped, non-empty)."""
    if "@" in entry:
        raise ArgumentError("host %r contains '@': credentials are not accepted in the host "
                            "list; use the username and password options" % entry.split("@")[-1])
    proto: Optional[str] = None
    hostport = entry
    if "=" in entry:
        hostport, proto_text = entry.split("=", 1)
        proto = proto_text.lower()
        if not proto:
            raise ArgumentError("empty protocol after '=' in host %r" % entry)
        if proto not in PROTOCOLS:
            raise ArgumentError("unknown protocol %r in host %r: expected one of %s"
                                % (proto_text, entry, ", ".join(sorted(PROTOCOLS))))
    port: Optional[int] = None
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise ArgumentError("unbalanced brackets in host %r: '[' without ']'" % entry)
        inner, rest = hostport[1:close], hostport[close + 1:]
        if "[" in inner or "[" in rest or "]" in rest:
            raise ArgumentError("unbalanced brackets in host %r" % entry)
        if rest:
            if not rest.startswith(":"):
                raise ArgumentError("unexpected %r after IPv6 address in host %r: expected "
                                    "':port'" % (rest, entry))
            port = _parse_port(rest[1:], entry)
        host = _decode(inner, "host")
        if not host:
            raise ArgumentError("empty IPv6 address '[]' in host %r" % entry)
        if not _is_ipv6(host):
            raise ArgumentError("invalid IPv6 address %r in host %r" % (host, entry))
    else:
        if "[" in hostport or "]" in hostport:
            raise ArgumentError("unbalanced brackets in host %r" % entry)
        colons = hostport.count(":")
        if colons > 1:
            raise ArgumentError("too many ':' in host %r: IPv6 addresses must be enclosed in "
                                "brackets, e.g. [::1]:11210" % entry)
        raw_host = hostport
        if colons == 1:
            raw_host, port_text = hostport.split(":", 1)
            port = _parse_port(port_text, entry)
        if not raw_host:
            raise ArgumentError("missing host name before the port in %r" % entry)
        host = _decode(raw_host, "host")
        if not host:
            raise ArgumentError("empty host name in %r" % entry)
        _check_host_name(host, entry)
    return Host(host, port, proto)


def _coerce_host(item: Any) -> Host:
    """Validate a Host / tuple given programmatically (see ``from_parts``)."""
    if isinstance(item, str):
        item = (item,)
    if not isinstance(item, tuple) or not 1 <= len(item) <= 3:
        raise ArgumentError("a host must be a Host, a (host, port, proto) tuple or a str, "
                            "not %r" % (item,))
    host, port, proto = (tuple(item) + (None, None))[:3]
    if not isinstance(host, str) or not host:
        raise ArgumentError("a host name must be a non-empty str, not %r" % (host,))
    _check_utf8(host, "host name")
    _check_host_name(host, host)
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ArgumentError("port %r of host %r is out of range 1..65535" % (port, host))
    if proto is not None:
        if not isinstance(proto, str) or proto.lower() not in PROTOCOLS:
            raise ArgumentError("unknown protocol %r for host %r" % (proto, host))
        proto = proto.lower()
    return Host(host, port, proto)


# --------------------------------------------------------------------------
# ConnectionString
# --------------------------------------------------------------------------


class ConnectionString:
    """A connection string, in the 2.x object shape.

    Build one from its parts, ``ConnectionString(bucket='default',
    hosts=None, options=None, scheme='couchbase')``, or from text with
    :meth:`parse`; change it (``cs.bucket = ...``, ``cs.hosts.append(...)``,
    :meth:`set_option`) and write it back with :meth:`encode`.

    Attributes:
        scheme: ``'couchbase'``, ``'couchbases'``, ``'http'`` or
            ``'memcached'`` (``'http'`` for a string without a scheme).
        hosts: list of host entries as text, ``'host'``, ``'host:port'``,
            ``'[::1]:port'`` or ``'host:port=proto'`` (as written in the
            string); an empty list means ``localhost``.
        bucket: the bucket name (percent-decoded); ``''`` when the string
            has no path.
        options: dict of option name -> list of str values (2.x kept
            ``parse_qs``'s lists); a repeated option keeps every value in
            order, and the last one is in effect (:meth:`option_values`).

    ``ConnectionString('couchbase://...')`` -- a first argument holding
    ``://``, which no bucket name can -- is read as :meth:`parse` would
    (this client's earlier form).
    """

    scheme: str
    hosts: List[str]
    bucket: str
    options: Dict[str, List[str]]

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self, bucket: Optional[str] = "default", hosts: Optional[Iterable[Any]] = None,
                 options: Optional[Mapping[str, Any]] = None, scheme: str = "couchbase") -> None:
        """Build a connection string from its parts (see the class docs).

        ``hosts`` holds entry strings, :class:`Host` values or ``(host,
        port, proto)`` tuples; ``options`` maps names to a list of values or
        to one value. Known options are checked.

        Raises:
            ArgumentError: an unknown scheme, a bad host entry, a bucket that
                is not a str, a bad value of a known option.
        """
        if (isinstance(bucket, str) and "://" in bucket and hosts is None and options is None
                and scheme == "couchbase"):
            unknown = self._load(bucket)
            for name in unknown:
                warnings.warn(_unknown_message(name), UnknownOptionWarning, stacklevel=2)
            return
        if not isinstance(scheme, str) or scheme.lower() not in SCHEMES:
            raise ArgumentError("unknown scheme %r: expected one of %s"
                                % (scheme, ", ".join(sorted(SCHEMES))))
        if bucket is None:
            bucket = ""
        if not isinstance(bucket, str):
            raise ArgumentError("bucket must be a str, not %s" % type(bucket).__name__)
        _check_utf8(bucket, "bucket name")
        if isinstance(hosts, str):
            raise ArgumentError("hosts must be a list of host entries, not a str")
        self.scheme = scheme.lower()
        self.bucket = bucket
        self.hosts = [_host_text(h) for h in (hosts or [])]
        self.options = {}
        for name, value in (options or {}).items():
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            for item in values:
                self._add_option(name, item)
        self.validate_options()

    @classmethod
    def parse(cls, ss: str) -> "ConnectionString":
        """Parse a connection string.

        Known options are checked with :meth:`validate_options`; each
        unknown option name triggers one :class:`UnknownOptionWarning`.

        Raises:
            ArgumentError: when ``ss`` is not a str or is malformed; the
                message names the offending part.
        """
        self = cls.__new__(cls)
        unknown = self._load(ss)
        for name in unknown:
            warnings.warn(_unknown_message(name), UnknownOptionWarning, stacklevel=2)
        return self

    @classmethod
    def from_parts(cls, scheme: str = "couchbase", hosts: Iterable[Any] = (),
                   bucket: Optional[str] = None,
                   options: Optional[Mapping[str, Any]] = None) -> "ConnectionString":
        """The constructor with the arguments in another order (this
        client's earlier helper); unknown options are accepted silently."""
        return cls(bucket=bucket, hosts=list(hosts), options=options, scheme=scheme)

    # -- parsing -----------------------------------------------------------

    def _load(self, s: Any) -> List[str]:
        """Fill this object from ``s``; return unknown option names in order."""
        if not isinstance(s, str):
            raise ArgumentError("a connection string must be a str, not %s" % type(s).__name__)
        _check_utf8(s, "the connection string", secret="password" in s)
        text = s.strip()
        match = _SCHEME_RE.match(text)
        if match:
            scheme_text = match.group(1)
            if not scheme_text:
                raise ArgumentError("missing scheme before '://'")
            scheme = scheme_text.lower()
            if scheme not in SCHEMES:
                raise ArgumentError("unknown scheme %r: expected one of %s"
                                    % (scheme_text, ", ".join(sorted(SCHEMES))))
            rest = text[match.end():]
        elif "://" in text:
            raise ArgumentError("invalid scheme before '://'")
        else:
            scheme, rest = "http", text

        rest, _, query = rest.partition("?")
        host_text, slash, path = rest.partition("/")

        hosts: List[str] = []
        for raw in re.split(r"[,;]", host_text):
            entry = raw.strip()
            if entry:
                _parse_host_entry(entry)  # validates
                hosts.append(entry)

        bucket = ""
        if slash and path:
            if "/" in path:
                raise ArgumentError("the path must be a single bucket name; got more than one "
                                    "segment in %r (write '/' inside a name as %%2F)" % path)
            bucket = _decode(path, "bucket name")

        options: Dict[str, List[str]] = {}
        for piece in query.split("&"):
            if not piece:
                continue
            if "=" not in piece:
                raise ArgumentError("option %r has no '=value' (write name=value)"
                                    % _decode_lenient(piece))
            raw_name, raw_value = piece.split("=", 1)
            name = _decode(raw_name, "option name")
            if not name:
                raise ArgumentError("empty option name in the query string")
            value = _decode(raw_value, "value of option %r" % name, secret=name in SECRET_OPTIONS)
            options.setdefault(name, []).append(value)

        self.scheme = scheme
        self.hosts = hosts
        self.bucket = bucket
        self.options = options
        self.validate_options()
        return [name for name in options if name not in KNOWN_OPTIONS]

    # -- validation --------------------------------------------------------

    def validate_options(self) -> None:
        """Check every value of the known options.

        Durations must satisfy :func:`parse_duration`, booleans
        :func:`parse_bool`; ``bootstrap_on`` is one of all/cccp/http,
        ``ssl`` one of on/off/no_verify (and not ``off`` with
        ``couchbases://``), ``compression`` one of
        on/off/inflate_only/deflate_only/force, ``ipv6`` one of
        disabled/allow/only, ``http_poolsize`` an int >= 0,
        ``max_value_size`` an int >= 1, ``sasl_mech_force`` a blank-separated
        list of mechanism names, ``certpath``, ``keypath``, ``truststorepath``
        and ``network`` non-empty.
        Unknown options are not checked.

        Raises:
            ArgumentError: for the first bad value found.
        """
        for name, values in self.options.items():
            if not isinstance(values, list):
                raise ArgumentError("options[%r] must be a list of values (as 2.x), not %r"
                                    % (name, type(values).__name__))
            check = _VALIDATORS.get(name)
            for value in values:
                if not isinstance(value, str):
                    raise ArgumentError("the values of option %r must be str, not %s"
                                        % (name, type(value).__name__))
                if check is not None:
                    check(value, name)
        if self.scheme == "couchbases" and self.option_values().get("ssl", "").lower() == "off":
            raise ArgumentError("option ssl=off contradicts the couchbases:// scheme")

    # -- options -----------------------------------------------------------

    def get_option(self, optname: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of option ``optname`` (as 2.x), or ``default``
        when it is not set."""
        values = self.options.get(optname)
        if not values:
            return default
        return values[0]

    def set_option(self, optname: str, value: Any) -> None:
        """Set option ``optname`` to the one value ``str(value)`` (bools
        become ``'true'``/``'false'``): ``options[optname] == [text]``.

        The value of a known option is checked first.

        Raises:
            ArgumentError: for an empty/non-str name, a None value or a bad
                value of a known option.
        """
        text = _option_text(optname, value)
        self.options[optname] = [text]

    def _add_option(self, name: str, value: Any) -> None:
        self.options.setdefault(name, []).append(_option_text(name, value))

    def clear_option(self, optname: str) -> None:
        """Remove option ``optname``; nothing happens if it is not set."""
        self.options.pop(optname, None)

    def has_option(self, name: str) -> bool:
        """Tell whether option ``name`` is set."""
        return bool(self.options.get(name))

    def option_values(self) -> Dict[str, str]:
        """Each option's value in effect: the last one given (a repeated
        option is applied in order, so the last wins, as libcouchbase did)."""
        return {name: values[-1] for name, values in self.options.items() if values}

    # -- derived views -----------------------------------------------------

    @property
    def implicit_port(self) -> int:
        """The port a host without one gets, by scheme (2.x): 8091 for
        ``http``, 11210 for ``couchbase``, 11207 for ``couchbases``, -1
        otherwise."""
        return {"http": 8091, "couchbase": 11210, "couchbases": 11207}.get(self.scheme, -1)

    def host_entries(self) -> List[Host]:
        """:attr:`hosts` parsed into :class:`Host` values (``localhost``
        when the list is empty).

        Raises:
            ArgumentError: an entry that is not a valid ``host[:port][=proto]``.
        """
        entries = [_parse_host_entry(_host_text(h).strip()) for h in self.hosts]
        return entries or [Host("localhost")]

    @property
    def is_ssl(self) -> bool:
        """True for ``couchbases://`` or when option ``ssl`` is ``on``/``no_verify``."""
        if self.scheme == "couchbases":
            return True
        return self.option_values().get("ssl", "off").lower() in ("on", "no_verify")

    def _default_kv_port(self) -> int:
        if self.scheme == "memcached":
            return _KV_MEMCACHED
        return _KV_TLS if self.is_ssl else _KV_PLAIN

    def _default_http_port(self) -> int:
        return _HTTP_TLS if self.is_ssl else _HTTP_PLAIN

    def kv_endpoints(self) -> List[Tuple[str, int]]:
        """Return the deduplicated (host, port) pairs to use for key-value.

        Default KV port: 11210 (11207 with TLS) for couchbase, couchbases and
        http; 11211 for memcached. Bare ports are KV ports for couchbase,
        couchbases and memcached, except that 8091 (and 18091 with TLS) is
        taken for a management-port mistake and ignored; bare ports of
        ``http://`` strings are HTTP ports and ignored here. ``=mcd``/``=mcds``
        ports are KV ports; ``=http``/``=https`` entries give their host with
        the default KV port.
        """
        default = self._default_kv_port()
        ignored = {_HTTP_PLAIN}
        if self.is_ssl:
            ignored.add(_HTTP_TLS)
        out: List[Tuple[str, int]] = []
        for h in self.host_entries():
            port = default
            if h.proto in ("mcd", "mcds"):
                port = h.port or default
            elif h.proto is None and h.port is not None and self.scheme != "http":
                if self.scheme == "memcached" or h.port not in ignored:
                    port = h.port
            pair = (h.host, port)
            if pair not in out:
                out.append(pair)
        return out

    def http_endpoints(self) -> List[Tuple[str, int]]:
        """Return the deduplicated (host, port) pairs for HTTP bootstrap/management.

        Default port 8091 (18091 with TLS). Bare ports of ``http://`` (or
        scheme-less) strings and ``=http``/``=https`` ports are HTTP ports;
        every other entry gives its host with the default port.
        ``memcached://`` has no HTTP endpoints: the result is ``[]``.
        """
        if self.scheme == "memcached":
            return []
        default = self._default_http_port()
        out: List[Tuple[str, int]] = []
        for h in self.host_entries():
            port = default
            if h.proto in ("http", "https") or (h.proto is None and self.scheme == "http"):
                port = h.port or default
            pair = (h.host, port)
            if pair not in out:
                out.append(pair)
        return out

    # -- output ------------------------------------------------------------

    def encode(self, include_secrets: bool = False) -> str:
        """The connection string text, as 2.x wrote it:
        ``scheme://h1,h2[/bucket]?name=value&...`` -- the ``?`` always, the
        hosts as they are in :attr:`hosts`, option names and values
        percent-encoded except ``/``, every value of a repeated option.

        Two deliberate differences keep the text parsing back to an equal
        object: a space is ``%20`` (2.x wrote ``+``, which this parser, like
        libcouchbase, reads as a plus sign) and the bucket name is
        percent-encoded. Options in :data:`SECRET_OPTIONS` are left out
        unless ``include_secrets`` is true.
        """
        parts = [self.scheme, "://", ",".join(_host_text(h) for h in self.hosts)]
        if self.bucket:
            parts.append("/" + _encode(self.bucket))
        pairs = [_encode(k, safe="/") + "=" + _encode(v, safe="/")
                 for k, values in self.options.items() for v in values
                 if include_secrets or k not in SECRET_OPTIONS]
        parts.append("?" + "&".join(pairs))
        return "".join(parts)

    def copy(self) -> "ConnectionString":
        """Return an independent copy (options lists and host list are new).

        Raises:
            ArgumentError: this object was edited into a bad state (an
                option that is not a list of str, a bad value).
        """
        self.validate_options()
        other = type(self).__new__(type(self))
        other.scheme = self.scheme
        other.hosts = list(self.hosts)
        other.bucket = self.bucket
        other.options = {k: list(v) for k, v in self.options.items()}
        return other

    def __str__(self) -> str:
        """The connection string without secrets (same as ``encode()``)."""
        return self.encode()

    def __repr__(self) -> str:
        """Class name and ``encode()`` output; secrets are never shown."""
        return "%s(%r)" % (type(self).__name__, self.encode())

    def __eq__(self, other: object) -> bool:
        """Equal when scheme, hosts, bucket and options (including secrets) match."""
        if not isinstance(other, ConnectionString):
            return NotImplemented
        return (self.scheme == other.scheme and [_host_text(h) for h in self.hosts]
                == [_host_text(h) for h in other.hosts]
                and (self.bucket or "") == (other.bucket or "") and self.options == other.options)


def _option_text(name: Any, value: Any) -> str:
    """The checked text of one option value (see ``set_option``)."""
    if not isinstance(name, str) or not name:
        raise ArgumentError("an option name must be a non-empty str, not %r" % (name,))
    if value is None:
        raise ArgumentError("option '%s' cannot be set to None; use clear_option()" % name)
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    _check_utf8(name, "option name")
    _check_utf8(text, "value of option %s" % ascii(name), secret=name in SECRET_OPTIONS)
    check = _VALIDATORS.get(name)
    if check is not None:
        check(text, name)
    return text


def _host_text(item: Any) -> str:
    """A host entry as text: a str is checked and kept as written; a
    :class:`Host` or ``(host, port, proto)`` tuple is written out."""
    if isinstance(item, str):
        entry = item.strip()
        if not entry:
            raise ArgumentError("empty host entry %r" % (item,))
        _check_utf8(entry, "host entry")
        _parse_host_entry(entry)
        return item
    host = _coerce_host(item)
    if _is_ipv6(host.host):
        text = "[" + _encode(host.host, safe=":.") + "]"
    else:
        text = _encode(host.host)
    if host.port is not None:
        text += ":%d" % host.port
    if host.proto is not None:
        text += "=" + host.proto
    return text


def _fmthost(host: str, port: Optional[int]) -> str:
    return host if port is None else "%s:%s" % (host, port)


def convert_1x_args(bucket: str, **kwargs: Any) -> Dict[str, Any]:
    """Turn 1.x constructor arguments (``host``, ``port``) into the 2.x
    ``connection_string`` keyword: ``http://host:port/bucket`` (``host`` may
    be a list of names or ``(name, port)`` pairs). Other keywords are
    returned unchanged; an explicit ``connection_string``/``connstr`` wins."""
    host = kwargs.pop("host", "localhost")
    port = kwargs.pop("port", None)
    if "connstr" not in kwargs and "connection_string" not in kwargs:
        if isinstance(host, (list, tuple)):
            names = [_fmthost(*h) if isinstance(h, (list, tuple)) else h for h in host]
        else:
            names = [_fmthost(host, port)]
        kwargs["connection_string"] = "http://%s/%s" % (",".join(names), bucket)
    return kwargs


def _unknown_message(name: str) -> str:
    return ("unknown connection string option %r: it is kept but this client does not "
            "use it" % name)


def _decode_lenient(text: str) -> str:
    try:
        return _decode(text, "option")
    except ArgumentError:
        return text
