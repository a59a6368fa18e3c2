"""A small asyncio HTTP/1.1 server on h11, shared by the emulator's services.

Handlers receive a :class:`HTTPRequest` and return a :class:`HTTPResponse`
whose body is bytes, an iterator of byte chunks, or an async iterator of
byte chunks; iterators are sent with chunked transfer encoding as they are
produced (view rows, N1QL results and streaming configs never sit whole in
memory). Connections are kept alive between requests.
"""

from __future__ import annotations

import asyncio
import base64
import http
import json
import re
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Pattern,
    Set,
    Tuple,
    Union,
)
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

__all__ = ["HTTPRequest", "HTTPResponse", "Router", "serve", "json_response", "error_response"]

Body = Union[bytes, Iterator[bytes], AsyncIterator[bytes]]


class HTTPRequest:
    """One request: ``method``, ``path`` (decoded), ``query`` (dict of the
    last value per name), ``headers`` (lower-case names), ``body``,
    ``params`` (from the route pattern), ``peercert`` (the verified client
    certificate of a TLS connection, as ``getpeercert()`` gives it, or None)."""

    def __init__(self, method: str, target: str, headers: Dict[str, str], body: bytes) -> None:
        self.method = method
        parts = urlsplit(target)
        self.raw_path = parts.path
        self.path = unquote(parts.path)
        self.query_string = parts.query
        self.query: Dict[str, str] = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.headers = headers
        self.body = body
        self.params: Dict[str, str] = {}
        self.peercert: Optional[Dict[str, Any]] = None

    def form(self) -> Dict[str, str]:
        """The body as ``application/x-www-form-urlencoded``."""
        return dict(parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))

    def basic_auth(self) -> Optional[Tuple[str, str]]:
        """(user, password) from the Authorization header, or None."""
        header = self.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user, password


class HTTPResponse:
    """A response: status, headers, and a body (bytes or an iterator)."""

    def __init__(self, status: int = 200, body: Body = b"", headers: Optional[Dict[str, str]] = None,
                 content_type: str = "application/json") -> None:
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.headers.setdefault("Content-Type", content_type)


def json_response(obj: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> HTTPResponse:
    """A JSON body."""
    return HTTPResponse(status, json.dumps(obj, separators=(",", ":")).encode("utf-8"), headers)


def error_response(status: int, message: str) -> HTTPResponse:
    """A plain-text error (what the management REST API mostly answers)."""
    return HTTPResponse(status, message.encode("utf-8"), content_type="text/plain")


Handler = Callable[[HTTPRequest], Union[HTTPResponse, Awaitable[HTTPResponse]]]


class Router:
    """(method, path regex) -> handler; the first match wins."""

    def __init__(self) -> None:
        self.routes: List[Tuple[Set[str], Pattern[str], Handler]] = []

    def add(self, methods: Iterable[str], pattern: str, handler: Handler) -> None:
        """Route ``methods`` on paths fully matching ``pattern`` (named groups
        become ``request.params``)."""
        self.routes.append((set(methods), re.compile(pattern + r"\Z"), handler))

    async def dispatch(self, request: HTTPRequest) -> HTTPResponse:
        """Find and run the handler."""
        allowed: Set[str] = set()
        for methods, pattern, handler in self.routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            if request.method not in methods:
                allowed |= methods
                continue
            request.params = {k: v for k, v in match.groupdict().items() if v is not None}
            result = handler(request)
            if asyncio.iscoroutine(result):
                result = await result
            return result  # type: ignore[return-value]
        if allowed:
            return error_response(405, "Method Not Allowed")
        return error_response(404, "Not found")


class _Connection:
    """One HTTP client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, router: Router,
                 registry: Set[Any]) -> None:
        self.reader = reader
        self.writer = writer
        self.router = router
        self.registry = registry
        self.conn = h11.Connection(h11.SERVER)

    def close(self) -> None:
        """Drop the connection (fault injection, node stop)."""
        transport = self.writer.transport
        if transport is not None:
            transport.abort()

    async def _send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                self.conn.receive_data(data)
                continue
            return event

    async def _stream(self, body: Any) -> None:
        """Send a streamed body, watching the client meanwhile: a config
        stream only writes when a config changes, so without a read the
        server would not notice a client that went away until then. Bytes
        the client sends meanwhile (a pipelined request) are kept for h11."""
        gone = asyncio.ensure_future(self.reader.read(65536))
        chunks = body.__aiter__()
        nxt = asyncio.ensure_future(chunks.__anext__())
        try:
            while True:
                done, _pending = await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone in done:
                    data = gone.result()
                    if not data:
                        nxt.cancel()
                        raise ConnectionError("the client closed the stream")
                    self.conn.receive_data(data)
                    gone = asyncio.ensure_future(self.reader.read(65536))
                    continue
                try:
                    chunk = nxt.result()
                except StopAsyncIteration:
                    return
                if chunk:
                    await self._send(h11.Data(data=chunk))
                nxt = asyncio.ensure_future(chunks.__anext__())
        finally:
            for task in (gone, nxt):
                if not task.done():
                    task.cancel()
            # End the body now, not when it is collected: without reference
            # counting (PyPy) an abandoned async generator would keep its
            # ``finally`` (and whatever it holds) until the next collection.
            await asyncio.gather(nxt, return_exceptions=True)
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # noqa: BLE001 - the body's own cleanup failing ends nothing more
                    pass

    async def run(self) -> None:
        self.registry.add(self)
        try:
            while True:
                event = await self._next_event()
                if isinstance(event, (h11.ConnectionClosed,)) or event is h11.PAUSED:
                    return
                if not isinstance(event, h11.Request):
                    return
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
                chunks = []
                while True:
                    part = await self._next_event()
                    if isinstance(part, h11.Data):
                        chunks.append(part.data)
                    elif isinstance(part, h11.EndOfMessage):
                        break
                    else:
                        return
                request = HTTPRequest(event.method.decode("ascii"), event.target.decode("latin-1"), headers,
                                      b"".join(chunks))
                request.peercert = self.writer.get_extra_info("peercert")
                try:
                    response = await self.router.dispatch(request)
                except Exception as exc:  # a bug in a handler: 500, keep serving
                    response = json_response({"error": "internal", "reason": repr(exc)}, 500)
                await self._respond(response)
                if self.conn.our_state is h11.MUST_CLOSE:
                    return
                self.conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError, h11.LocalProtocolError, asyncio.IncompleteReadError):
            return
        finally:
            self.registry.discard(self)
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    async def _respond(self, response: HTTPResponse) -> None:
        headers = [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in response.headers.items()]
        headers.append((b"Server", b"Couchbase Server (emulated)"))
        try:
            reason = http.HTTPStatus(response.status).phrase.encode("latin-1")
        except ValueError:
            reason = b""
        body = response.body
        if isinstance(body, (bytes, bytearray)):
            headers.append((b"Content-Length", str(len(body)).encode()))
            await self._send(h11.Response(status_code=response.status, headers=headers, reason=reason))
            if body:
                await self._send(h11.Data(data=bytes(body)))
            await self._send(h11.EndOfMessage())
            return
        headers.append((b"Transfer-Encoding", b"chunked"))
        await self._send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if hasattr(body, "__aiter__"):
            await self._stream(body)
        else:
            count = 0
            try:
                for chunk in body:  # type: ignore[union-attr]
                    if chunk:
                        await self._send(h11.Data(data=chunk))
                    count += 1
                    if count % 16 == 0:
                        await asyncio.sleep(0)  # let the other connections run
            finally:
                close = getattr(body, "close", None)  # a generator: its cleanup runs now (see _stream)
                if close is not None:
                    close()
        await self._send(h11.EndOfMessage())


async def serve(router: Router, host: str, port: int, ssl_context: Any, registry: Set[Any]) -> asyncio.AbstractServer:
    """Start an HTTP server; ``registry`` collects its live connections."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _Connection(reader, writer, router, registry).run()

    return await asyncio.start_server(on_client, host, port, ssl=ssl_context, reuse_address=True)
