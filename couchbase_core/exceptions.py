"""The exception tree and the table of result codes (``rc``).

Every failure the client reports is a :class:`CouchbaseError` subclass, and
every result carries an integer ``rc``. The codes are this project's own and
stable across releases:

* ``0`` is success.
* ``0x01`` .. ``0xff`` are the memcached/Couchbase binary-protocol status
  codes, unchanged: when the server answers ``KEY_ENOENT`` (0x01) the result's
  ``rc`` is ``0x01`` and the exception is :class:`NotFoundError`.
* ``0x100`` and above are conditions the client itself detects (a timeout,
  a dropped socket, bad arguments, ...).

The full table, with the exception each code raises, is :data:`RC_TABLE`
and is reproduced in ``docs/errors.md``.

Each concrete class also inherits from one or more *category* classes, so
callers can catch by cause: :class:`CouchbaseNetworkError`,
:class:`CouchbaseInputError`, :class:`CouchbaseTransientError`,
:class:`CouchbaseFatalError`, :class:`CouchbaseDataError` and
:class:`CouchbaseInternalError`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Type

__all__ = [
    "RC", "RC_TABLE", "exc_from_rc", "rc_description",
    "CouchbaseError", "CouchbaseNetworkError", "CouchbaseInputError",
    "CouchbaseTransientError", "CouchbaseFatalError", "CouchbaseDataError",
    "CouchbaseInternalError",
    "ArgumentError", "ValueFormatError", "AuthError", "DeltaBadvalError",
    "TooBigError", "BusyError", "InternalError", "InvalidError",
    "NoMemoryError", "RangeError", "TemporaryFailError", "KeyExistsError",
    "NotFoundError", "NetworkError", "OutcomeUnknownError", "NotMyVbucketError", "NotStoredError",
    "NotSupportedError", "UnknownCommandError", "UnknownHostError",
    "ProtocolError", "TimeoutError", "ConnectError", "BucketNotFoundError",
    "ClientTemporaryFailError", "HTTPError", "ObjectThreadError",
    "ViewEngineError", "ObjectDestroyedError", "PipelineError",
    "LockedError", "NotLockedError", "AccessError",
    "SubdocPathNotFoundError", "SubdocPathExistsError",
    "SubdocPathInvalidError", "DocumentNotJsonError",
    "SubdocPathMismatchError", "DocumentTooDeepError",
    "SubdocNumberTooBigError", "SubdocValueTooDeepError",
    "SubdocCantInsertValueError", "SubdocBadDeltaError",
    "SubdocMultipleErrors", "SubdocEmptyPathError", "SubdocInvalidComboError", "SubdocXattrError",
    "QueueEmpty", "LimitExceededError", "ForkError",
    "DurabilityError", "DurabilityInvalidLevelError",
    "DurabilityImpossibleError", "DurabilitySyncWriteInProgressError",
    "DurabilitySyncWriteAmbiguousError", "DurabilitySyncWriteReCommitInProgressError",
    "OptionIgnoredWarning",
]


class RC:
    """Named result codes. Values below 0x100 are server status codes."""

    SUCCESS = 0x00
    # -- server statuses (the wire value) --------------------------------
    KEY_ENOENT = 0x01
    KEY_EEXISTS = 0x02
    E2BIG = 0x03
    EINVAL = 0x04
    NOT_STORED = 0x05
    DELTA_BADVAL = 0x06
    NOT_MY_VBUCKET = 0x07
    NO_BUCKET = 0x08
    LOCKED = 0x09
    NOT_LOCKED = 0x0E
    AUTH_STALE = 0x1F
    AUTH_ERROR = 0x20
    AUTH_CONTINUE = 0x21
    ERANGE = 0x22
    EACCESS = 0x24
    NOT_INITIALIZED = 0x25
    UNKNOWN_COMMAND = 0x81
    ENOMEM = 0x82
    NOT_SUPPORTED = 0x83
    EINTERNAL = 0x84
    EBUSY = 0x85
    ETMPFAIL = 0x86
    DURABILITY_INVALID_LEVEL = 0xA0
    DURABILITY_IMPOSSIBLE = 0xA1
    SYNC_WRITE_IN_PROGRESS = 0xA2
    SYNC_WRITE_AMBIGUOUS = 0xA3
    SYNC_WRITE_RE_COMMIT_IN_PROGRESS = 0xA4
    SUBDOC_PATH_ENOENT = 0xC0
    SUBDOC_PATH_MISMATCH = 0xC1
    SUBDOC_PATH_EINVAL = 0xC2
    SUBDOC_PATH_E2BIG = 0xC3
    SUBDOC_DOC_E2DEEP = 0xC4
    SUBDOC_VALUE_CANTINSERT = 0xC5
    SUBDOC_DOC_NOTJSON = 0xC6
    SUBDOC_NUM_ERANGE = 0xC7
    SUBDOC_DELTA_EINVAL = 0xC8
    SUBDOC_PATH_EEXISTS = 0xC9
    SUBDOC_VALUE_ETOODEEP = 0xCA
    SUBDOC_INVALID_COMBO = 0xCB
    SUBDOC_MULTI_PATH_FAILURE = 0xCC
    SUBDOC_XATTR_INVALID_FLAG_COMBO = 0xCE
    SUBDOC_XATTR_INVALID_KEY_COMBO = 0xCF
    SUBDOC_XATTR_UNKNOWN_MACRO = 0xD0
    SUBDOC_XATTR_UNKNOWN_VATTR = 0xD1
    SUBDOC_XATTR_CANT_MODIFY_VATTR = 0xD2
    SUBDOC_INVALID_XATTR_ORDER = 0xD4
    SUBDOC_XATTR_UNKNOWN_VATTR_MACRO = 0xD5
    # -- client-side conditions ---------------------------------------------
    ARGUMENT = 0x100
    VALUE_FORMAT = 0x101
    NETWORK = 0x102
    TIMEOUT = 0x103
    CONNECT = 0x104
    UNKNOWN_HOST = 0x105
    PROTOCOL = 0x106
    BUCKET_NOT_FOUND = 0x107
    CLIENT_TMPFAIL = 0x108
    HTTP = 0x109
    OBJECT_THREAD = 0x10A
    VIEW_ENGINE = 0x10B
    OBJECT_DESTROYED = 0x10C
    PIPELINE = 0x10D
    CLIENT_NOT_SUPPORTED = 0x10E
    CLIENT_TOO_BIG = 0x10F
    SUBDOC_EMPTY_PATH = 0x110
    AUTH_FAILED = 0x111
    INTERNAL = 0x112
    QUEUE_EMPTY = 0x113
    OUTCOME_UNKNOWN = 0x114
    LIMIT_EXCEEDED = 0x115
    FORKED = 0x116


# --------------------------------------------------------------------------
# The classes
# --------------------------------------------------------------------------


class CouchbaseError(Exception):
    """Base of every error this library raises.

    Attributes:
        rc: the integer result code (see :data:`RC_TABLE`).
        key: the key the failure is about, when there is one.
        result: the failed operation's result object, when there is one.
        all_results: for ``_multi`` calls and pipelines, the
            :class:`~couchbase_core.result.MultiResult` with *every* key's
            outcome, successful or not.
        message: a human readable description.
        inner_cause: the lower-level exception that caused this one, if any.
        objextra: extra data attached by the raiser (e.g. a server reply).

    It may be built from a message string, from a dict of the attributes
    above (the 2.x form), or from keyword arguments.
    """

    #: Default code of the class; instances may carry a more precise one.
    CODE = 0

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        if isinstance(params, dict):
            kwargs = {**params, **kwargs}
        elif params is not None:
            kwargs.setdefault("message", str(params))
        self.rc: int = kwargs.get("rc", self.CODE)
        self.key: Any = kwargs.get("key")
        self.result: Any = kwargs.get("result")
        self.all_results: Any = kwargs.get("all_results")
        self.message: str = kwargs.get("message") or ""
        self.inner_cause: Optional[BaseException] = kwargs.get("inner_cause")
        self.objextra: Any = kwargs.get("objextra")
        super().__init__(self.message)

    @classmethod
    def rc_to_exctype(cls, rc: int) -> Type["CouchbaseError"]:
        """Return the exception class raised for result code ``rc``."""
        return _exc_class_for(rc)

    def split_results(self) -> Tuple[Dict[Any, Any], Dict[Any, Any]]:
        """Split :attr:`all_results` into ``(ok, failed)`` dicts of key -> result.

        A result counts as ok when it succeeded. Without ``all_results``
        (a single-key call) the failed dict holds just this error's result.
        """
        ok: Dict[Any, Any] = {}
        failed: Dict[Any, Any] = {}
        source = self.all_results
        if source is None:
            if self.result is not None:
                failed[self.key] = self.result
            return ok, failed
        for key, res in source.items():
            (ok if res.success else failed)[key] = res
        return ok, failed

    def __str__(self) -> str:
        parts = ["<"]
        desc = self.message or rc_description(self.rc)
        if self.rc:
            parts.append("RC=0x%X[%s]" % (self.rc, rc_description(self.rc)))
            if self.message and self.message != rc_description(self.rc):
                parts.append(", " + self.message)
        else:
            parts.append(desc)
        if self.key is not None:
            parts.append(", Key=%r" % (self.key,))
        if self.inner_cause is not None:
            parts.append(", C Source=(%s: %s)" % (type(self.inner_cause).__name__, self.inner_cause))
        if self.all_results is not None:
            parts.append(", Results=%d" % len(self.all_results))
        parts.append(">")
        return "".join(parts)

    def __repr__(self) -> str:
        return "%s(%s)" % (type(self).__name__, str(self))

    @property
    def is_transient(self) -> bool:
        """True when retrying the same operation later may succeed."""
        return isinstance(self, CouchbaseTransientError)

    @property
    def is_network(self) -> bool:
        """True for failures of the connection rather than of the request."""
        return isinstance(self, CouchbaseNetworkError)

    @property
    def is_data(self) -> bool:
        """True for failures about the document's state (missing, exists...)."""
        return isinstance(self, CouchbaseDataError)


# Category classes ----------------------------------------------------------


class CouchbaseNetworkError(CouchbaseError):
    """Category: the connection to a node failed or misbehaved."""


class CouchbaseInputError(CouchbaseError):
    """Category: the request itself is invalid; retrying cannot help."""


class CouchbaseTransientError(CouchbaseError):
    """Category: a temporary condition; the same request may succeed later."""


class CouchbaseFatalError(CouchbaseError):
    """Category: the bucket object is unusable (closed, misconfigured)."""


class CouchbaseDataError(CouchbaseError):
    """Category: the document's state prevents the operation."""


class CouchbaseInternalError(CouchbaseError):
    """Category: a bug or an unexpected state inside the client or server."""


# Concrete classes ------------------------------------------------------------


class ArgumentError(CouchbaseInputError):
    """An argument has the wrong type or value (checked before any I/O)."""

    CODE = RC.ARGUMENT


class ValueFormatError(CouchbaseInputError):
    """A value cannot be encoded (or a stored value decoded) in the format asked."""

    CODE = RC.VALUE_FORMAT


class AuthError(CouchbaseInputError, CouchbaseFatalError):
    """Authentication failed or access to the bucket is not permitted."""

    CODE = RC.AUTH_ERROR


class AccessError(AuthError):
    """The server refused the operation for lack of privileges (EACCESS)."""

    CODE = RC.EACCESS


class DeltaBadvalError(CouchbaseDataError, CouchbaseInputError):
    """``counter`` on a value that is not a decimal number."""

    CODE = RC.DELTA_BADVAL


class TooBigError(CouchbaseDataError, CouchbaseInputError):
    """The value is larger than the server accepts."""

    CODE = RC.E2BIG


class BusyError(CouchbaseTransientError):
    """The server is too busy; retry later."""

    CODE = RC.EBUSY


class InternalError(CouchbaseInternalError):
    """The server reported an internal error."""

    CODE = RC.EINTERNAL


class InvalidError(CouchbaseInputError):
    """The server rejected the request as malformed (EINVAL)."""

    CODE = RC.EINVAL


class NoMemoryError(CouchbaseTransientError):
    """The server is out of memory."""

    CODE = RC.ENOMEM


class RangeError(CouchbaseInputError):
    """A value is out of the allowed range."""

    CODE = RC.ERANGE


class TemporaryFailError(CouchbaseTransientError):
    """The server could not serve the request now (ETMPFAIL)."""

    CODE = RC.ETMPFAIL


class KeyExistsError(CouchbaseDataError):
    """The key exists (insert) or its CAS differs from the one given."""

    CODE = RC.KEY_EEXISTS


class NotFoundError(CouchbaseDataError):
    """The key does not exist."""

    CODE = RC.KEY_ENOENT


class LockedError(KeyExistsError, TemporaryFailError):
    """The document is locked by ``lock`` (GET_LOCKED). It is both a
    :class:`KeyExistsError` (what 2.x raised for a mutation of a locked
    document) and a :class:`TemporaryFailError` (what 2.x raised for
    ``lock`` on a document already locked), so 2.x handlers of either
    catch it."""

    CODE = RC.LOCKED


class NotLockedError(CouchbaseDataError, TemporaryFailError):
    """``unlock`` on a document that is not locked. A
    :class:`TemporaryFailError`, which is what 2.x code catches for it."""

    CODE = RC.NOT_LOCKED


class NetworkError(CouchbaseNetworkError):
    """The connection to a node broke while the operation was pending."""

    CODE = RC.NETWORK


class OutcomeUnknownError(NetworkError):
    """A mutation was written to the server, then its connection failed
    before the reply came: the server may or may not have applied it. The
    client does not send it again (that could apply it twice); read the
    document to find out."""

    CODE = RC.OUTCOME_UNKNOWN


class NotMyVbucketError(CouchbaseNetworkError, CouchbaseTransientError):
    """The node does not own the key's vBucket (after retries ran out)."""

    CODE = RC.NOT_MY_VBUCKET


class NotStoredError(CouchbaseDataError):
    """The item was not stored (append/prepend on a missing key)."""

    CODE = RC.NOT_STORED


class NotSupportedError(CouchbaseInputError):
    """The operation is not supported by this server or bucket type."""

    CODE = RC.NOT_SUPPORTED


class UnknownCommandError(CouchbaseInputError):
    """The server does not know the command."""

    CODE = RC.UNKNOWN_COMMAND


class UnknownHostError(CouchbaseNetworkError, CouchbaseInputError):
    """A host name could not be resolved."""

    CODE = RC.UNKNOWN_HOST


class ProtocolError(CouchbaseNetworkError):
    """The server sent bytes that are not a valid protocol frame."""

    CODE = RC.PROTOCOL


class TimeoutError(CouchbaseNetworkError, CouchbaseTransientError):  # noqa: A001
    """The operation did not complete within its timeout."""

    CODE = RC.TIMEOUT


class ConnectError(CouchbaseNetworkError):
    """A connection to a node could not be established."""

    CODE = RC.CONNECT


class BucketNotFoundError(CouchbaseInputError, CouchbaseFatalError):
    """The bucket does not exist on the cluster."""

    CODE = RC.BUCKET_NOT_FOUND


class ClientTemporaryFailError(CouchbaseTransientError):
    """The client cannot schedule the operation right now."""

    CODE = RC.CLIENT_TMPFAIL


class HTTPError(CouchbaseError):
    """An HTTP request (views, N1QL, management) failed."""

    CODE = RC.HTTP


class ObjectThreadError(CouchbaseInternalError):
    """A blocking Bucket was used by two threads at once (``LOCKMODE_EXC``)."""

    CODE = RC.OBJECT_THREAD


class ViewEngineError(HTTPError):
    """The view engine reported an error for the query."""

    CODE = RC.VIEW_ENGINE


class ObjectDestroyedError(CouchbaseFatalError):
    """The bucket was closed while the operation was pending, or before it."""

    CODE = RC.OBJECT_DESTROYED


class PipelineError(CouchbaseInputError):
    """An operation is not allowed inside, or outside, a pipeline."""

    CODE = RC.PIPELINE


class SubdocPathNotFoundError(CouchbaseDataError, IndexError):
    """A sub-document path does not exist. Also an :class:`IndexError`:
    2.x raised that for a missing map key or list index in ``map_get``
    and ``list_get``."""

    CODE = RC.SUBDOC_PATH_ENOENT


class SubdocPathExistsError(CouchbaseDataError):
    """A sub-document path already exists."""

    CODE = RC.SUBDOC_PATH_EEXISTS


class SubdocPathInvalidError(CouchbaseInputError):
    """A sub-document path is malformed or too long."""

    CODE = RC.SUBDOC_PATH_EINVAL


class DocumentNotJsonError(CouchbaseInputError):
    """A sub-document operation on a document that is not JSON."""

    CODE = RC.SUBDOC_DOC_NOTJSON


class SubdocPathMismatchError(CouchbaseInputError):
    """The path conflicts with the document's structure."""

    CODE = RC.SUBDOC_PATH_MISMATCH


class DocumentTooDeepError(CouchbaseInputError):
    """The document is too deeply nested."""

    CODE = RC.SUBDOC_DOC_E2DEEP


class SubdocNumberTooBigError(CouchbaseInputError):
    """The existing number is out of the 64-bit range."""

    CODE = RC.SUBDOC_NUM_ERANGE


class SubdocValueTooDeepError(CouchbaseInputError):
    """The value would make the document too deep."""

    CODE = RC.SUBDOC_VALUE_ETOODEEP


class SubdocCantInsertValueError(CouchbaseInputError):
    """The value cannot be inserted at the path (not valid JSON for the op)."""

    CODE = RC.SUBDOC_VALUE_CANTINSERT


class SubdocBadDeltaError(CouchbaseInputError, ValueError):
    """A sub-document counter delta is zero, non-integer or out of range.
    Also a :class:`ValueError`, which 2.x raised for a zero delta."""

    CODE = RC.SUBDOC_DELTA_EINVAL


class SubdocMultipleErrors(CouchbaseDataError):
    """One or more paths of a multi-path operation failed."""

    CODE = RC.SUBDOC_MULTI_PATH_FAILURE


class SubdocEmptyPathError(CouchbaseInputError):
    """An empty path where the operation needs one."""

    CODE = RC.SUBDOC_EMPTY_PATH


class SubdocInvalidComboError(CouchbaseInputError):
    """An invalid combination of sub-document specs or flags."""

    CODE = RC.SUBDOC_INVALID_COMBO


class SubdocXattrError(CouchbaseInputError):
    """The server refused an extended-attribute (xattr) spec: flags that do
    not go together, specs for more than one xattr key, an unknown macro or
    virtual attribute, a write to a virtual attribute, or xattr specs placed
    after document-body specs. ``rc`` tells which."""

    CODE = RC.SUBDOC_XATTR_INVALID_FLAG_COMBO


class QueueEmpty(CouchbaseDataError, IndexError):
    """``queue_pop`` on an empty queue."""

    CODE = RC.QUEUE_EMPTY


class LimitExceededError(CouchbaseNetworkError):
    """The server sent more than one of the client's documented limits
    allows (a value inflating beyond ``MAX_INFLATED_SIZE``, an HTTP body,
    metadata or config beyond its cap, JSON nested too deeply). Only the
    operation concerned fails; the message names the limit and, when it is
    configurable, how to raise it. See docs/couchbase.md, "Limits"."""

    CODE = RC.LIMIT_EXCEEDED
class ForkError(CouchbaseFatalError):
    """The process forked (``os.fork()``, a pre-forking server, multiprocessing).

    In the child process: an operation that was in flight at the fork belongs
    to the parent (which receives its outcome) and fails with this error; and
    a bucket on a caller-supplied IOPS that cannot say it survives a fork
    raises it on every use. See "Forks" in ``docs/gevent.md``."""

    CODE = RC.FORKED


class DurabilityError(CouchbaseError):
    """Base of the synchronous-replication (durability level) failures."""


class DurabilityInvalidLevelError(DurabilityError, CouchbaseInputError):
    """The durability level is not valid for this bucket."""

    CODE = RC.DURABILITY_INVALID_LEVEL


class DurabilityImpossibleError(DurabilityError, CouchbaseInputError):
    """The cluster has too few replicas to meet the durability level."""

    CODE = RC.DURABILITY_IMPOSSIBLE


class DurabilitySyncWriteInProgressError(DurabilityError, CouchbaseTransientError):
    """Another durable write on the key is still pending."""

    CODE = RC.SYNC_WRITE_IN_PROGRESS


class DurabilitySyncWriteAmbiguousError(DurabilityError):
    """The durable write's outcome is unknown (it may or may not have happened)."""

    CODE = RC.SYNC_WRITE_AMBIGUOUS


class DurabilitySyncWriteReCommitInProgressError(DurabilityError, CouchbaseTransientError):
    """A durable write on the key is being re-committed."""

    CODE = RC.SYNC_WRITE_RE_COMMIT_IN_PROGRESS


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------

#: rc -> (exception class, short description). Codes not listed here (e.g.
#: newer server statuses) map to :class:`CouchbaseError` itself.
RC_TABLE: Dict[int, Tuple[Type[CouchbaseError], str]] = {
    RC.KEY_ENOENT: (NotFoundError, "The key does not exist on the server"),
    RC.KEY_EEXISTS: (KeyExistsError, "The key exists or its CAS does not match"),
    RC.E2BIG: (TooBigError, "The value is too large for the server"),
    RC.EINVAL: (InvalidError, "The server rejected the request as invalid"),
    RC.NOT_STORED: (NotStoredError, "The item was not stored"),
    RC.DELTA_BADVAL: (DeltaBadvalError, "The stored value is not a number"),
    RC.NOT_MY_VBUCKET: (NotMyVbucketError, "The node does not own the key's vBucket"),
    RC.NO_BUCKET: (BucketNotFoundError, "No bucket selected on the connection"),
    RC.LOCKED: (LockedError, "The document is locked"),
    RC.NOT_LOCKED: (NotLockedError, "The document is not locked"),
    RC.AUTH_STALE: (AuthError, "The credentials changed; re-authenticate"),
    RC.AUTH_ERROR: (AuthError, "Authentication failed"),
    RC.ERANGE: (RangeError, "A value is out of range"),
    RC.EACCESS: (AccessError, "No access to the resource"),
    RC.NOT_INITIALIZED: (TemporaryFailError, "The node is not initialized yet"),
    RC.UNKNOWN_COMMAND: (UnknownCommandError, "The server does not know the command"),
    RC.ENOMEM: (NoMemoryError, "The server is out of memory"),
    RC.NOT_SUPPORTED: (NotSupportedError, "Not supported by the server"),
    RC.EINTERNAL: (InternalError, "Internal server error"),
    RC.EBUSY: (BusyError, "The server is busy"),
    RC.ETMPFAIL: (TemporaryFailError, "Temporary failure on the server"),
    RC.DURABILITY_INVALID_LEVEL: (DurabilityInvalidLevelError, "Invalid durability level"),
    RC.DURABILITY_IMPOSSIBLE: (DurabilityImpossibleError, "Durability requirement impossible"),
    RC.SYNC_WRITE_IN_PROGRESS: (DurabilitySyncWriteInProgressError, "A durable write is in progress on the key"),
    RC.SYNC_WRITE_AMBIGUOUS: (DurabilitySyncWriteAmbiguousError, "The durable write's outcome is ambiguous"),
    RC.SYNC_WRITE_RE_COMMIT_IN_PROGRESS: (DurabilitySyncWriteReCommitInProgressError, "A durable write is being re-committed"),
    RC.SUBDOC_PATH_ENOENT: (SubdocPathNotFoundError, "Sub-document path does not exist"),
    RC.SUBDOC_PATH_MISMATCH: (SubdocPathMismatchError, "Sub-document path mismatch"),
    RC.SUBDOC_PATH_EINVAL: (SubdocPathInvalidError, "Invalid sub-document path"),
    RC.SUBDOC_PATH_E2BIG: (SubdocPathInvalidError, "Sub-document path too long or too deep"),
    RC.SUBDOC_DOC_E2DEEP: (DocumentTooDeepError, "Document too deep"),
    RC.SUBDOC_VALUE_CANTINSERT: (SubdocCantInsertValueError, "Value cannot be inserted at the path"),
    RC.SUBDOC_DOC_NOTJSON: (DocumentNotJsonError, "Document is not JSON"),
    RC.SUBDOC_NUM_ERANGE: (SubdocNumberTooBigError, "Number out of range"),
    RC.SUBDOC_DELTA_EINVAL: (SubdocBadDeltaError, "Invalid counter delta"),
    RC.SUBDOC_PATH_EEXISTS: (SubdocPathExistsError, "Sub-document path already exists"),
    RC.SUBDOC_VALUE_ETOODEEP: (SubdocValueTooDeepError, "Value too deep"),
    RC.SUBDOC_INVALID_COMBO: (SubdocInvalidComboError, "Invalid combination of sub-document specs"),
    RC.SUBDOC_MULTI_PATH_FAILURE: (SubdocMultipleErrors, "One or more sub-document paths failed"),
    RC.SUBDOC_XATTR_INVALID_FLAG_COMBO: (SubdocXattrError, "Invalid combination of xattr flags"),
    RC.SUBDOC_XATTR_INVALID_KEY_COMBO: (SubdocXattrError, "Specs for more than one xattr key"),
    RC.SUBDOC_XATTR_UNKNOWN_MACRO: (SubdocXattrError, "Unknown xattr macro"),
    RC.SUBDOC_XATTR_UNKNOWN_VATTR: (SubdocXattrError, "Unknown virtual attribute"),
    RC.SUBDOC_XATTR_CANT_MODIFY_VATTR: (SubdocXattrError, "Virtual attributes cannot be modified"),
    RC.SUBDOC_INVALID_XATTR_ORDER: (SubdocXattrError, "Xattr specs must come before document specs"),
    RC.SUBDOC_XATTR_UNKNOWN_VATTR_MACRO: (SubdocXattrError, "Unknown virtual attribute macro"),
    RC.ARGUMENT: (ArgumentError, "Invalid argument"),
    RC.VALUE_FORMAT: (ValueFormatError, "The value cannot be encoded or decoded in this format"),
    RC.NETWORK: (NetworkError, "The connection to the node failed"),
    RC.TIMEOUT: (TimeoutError, "The operation timed out"),
    RC.CONNECT: (ConnectError, "Could not connect to the node"),
    RC.UNKNOWN_HOST: (UnknownHostError, "The host name could not be resolved"),
    RC.PROTOCOL: (ProtocolError, "The server sent an invalid frame"),
    RC.BUCKET_NOT_FOUND: (BucketNotFoundError, "The bucket does not exist"),
    RC.CLIENT_TMPFAIL: (ClientTemporaryFailError, "The client cannot schedule the operation now"),
    RC.HTTP: (HTTPError, "HTTP request failed"),
    RC.OBJECT_THREAD: (ObjectThreadError, "The bucket is in use by another thread"),
    RC.VIEW_ENGINE: (ViewEngineError, "The view engine reported an error"),
    RC.OBJECT_DESTROYED: (ObjectDestroyedError, "The bucket is closed"),
    RC.PIPELINE: (PipelineError, "Operation not allowed in this pipeline state"),
    RC.CLIENT_NOT_SUPPORTED: (NotSupportedError, "Not supported by this bucket type"),
    RC.CLIENT_TOO_BIG: (TooBigError, "The value exceeds the size limit"),
    RC.SUBDOC_EMPTY_PATH: (SubdocEmptyPathError, "Empty sub-document path"),
    RC.AUTH_FAILED: (AuthError, "Authentication failed"),
    RC.INTERNAL: (InternalError, "Internal client error"),
    RC.QUEUE_EMPTY: (QueueEmpty, "The queue is empty"),
    RC.OUTCOME_UNKNOWN: (OutcomeUnknownError, "The connection failed after the mutation was sent: it may or may "
                                              "not have been applied"),
    RC.LIMIT_EXCEEDED: (LimitExceededError, "The server sent more than a client limit allows"),
    RC.FORKED: (ForkError, "The process forked; the operation or bucket belongs to the parent process"),
}


def _exc_class_for(rc: int) -> Type[CouchbaseError]:
    entry = RC_TABLE.get(rc)
    return entry[0] if entry else CouchbaseError


def rc_description(rc: int) -> str:
    """Return the short description of result code ``rc``."""
    if rc == 0:
        return "Success"
    entry = RC_TABLE.get(rc)
    if entry:
        return entry[1]
    if rc < 0x100:
        return "Server status 0x%02X" % rc
    return "Unknown error code 0x%X" % rc


def exc_from_rc(rc: int, msg: Optional[str] = None, obj: Any = None) -> CouchbaseError:
    """Build (do not raise) the exception for result code ``rc``.

    ``msg`` becomes the message (default: the code's description) and
    ``obj`` is stored as :attr:`CouchbaseError.objextra`.
    """
    cls = _exc_class_for(rc)
    return cls({"rc": rc, "message": msg or rc_description(rc), "objextra": obj})


# Warnings --------------------------------------------------------------------


class OptionIgnoredWarning(UserWarning):
    """A connection-string or keyword option was accepted but has no effect
    in this client (e.g. ``dnssrv=true`` where no DNS SRV lookup is made,
    or a ``tracer=`` that is not an OpenTelemetry tracer). The message names the
    option and says what is done instead. Unknown option names warn with its
    subclass :class:`couchbase_core.connstr.UnknownOptionWarning`."""
