"""The documentation stays true: its tables list what the code has, and its
examples run."""

from __future__ import annotations

import os
import re
import time

from couchbase_core.exceptions import RC_TABLE
from couchbase_core.iops.testkit import IOPSContract

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def _python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_errors_doc_lists_every_result_code():
    doc = _read("docs/errors.md")
    for rc, (cls, _desc) in RC_TABLE.items():
        assert "| `0x%02X` | %d | " % (rc, rc) in doc, hex(rc)
        assert "`%s`" % cls.__name__ in doc


def test_readme_quick_start_is_two_commands():
    readme = _read("README.md")
    block = re.search(r"## Quick start.*?```sh\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def _doc_poll_iops():
    code = _python_blocks(_read("docs/iops.md"))
    namespace = {}
    exec(code[1], namespace)  # the PollIOPS example
    return namespace["PollIOPS"]


class TestDocumentedPollIOPS(IOPSContract):
    """The example IOPS of docs/iops.md passes the contract suite."""

    def make_iops(self):
        return _doc_poll_iops()()

    def run_loop(self, iops, until, timeout):
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            iops.run_once(0.01)


def test_documented_async_example_runs(memcached_server):
    code = _python_blocks(_read("docs/iops.md"))
    namespace = {}
    exec(code[1], namespace)
    usage = code[2].replace("memcached://127.0.0.1:11211", memcached_server.connstr)
    exec(usage, namespace)
    assert namespace["ar"].done and namespace["ar"].all_ok


def _doc_asyncio_namespace():
    code = _python_blocks(_read("docs/async.md"))
    iops_block = next(c for c in code if "class AsyncioIOPS" in c)
    main_block = next(c for c in code if "async def main" in c)
    namespace = {}
    exec(iops_block, namespace)
    exec(main_block, namespace)
    return namespace


class TestDocumentedAsyncioIOPS(IOPSContract):
    """The asyncio IOPS of docs/async.md passes the contract suite."""

    def make_iops(self):
        import asyncio

        self._loop = asyncio.new_event_loop()
        return _doc_asyncio_namespace()["AsyncioIOPS"](self._loop)

    def run_loop(self, iops, until, timeout):
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            iops.loop.run_until_complete(_asyncio_tick())

    def teardown_method(self, method):
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.close()


async def _asyncio_tick():
    import asyncio

    await asyncio.sleep(0.005)


def test_documented_asyncio_main_runs(memcached_server):
    import asyncio

    namespace = _doc_asyncio_namespace()
    value, keys = asyncio.run(namespace["main"](memcached_server.connstr))
    assert value == {"text": "hello"}
    assert keys == ["a", "b"]
