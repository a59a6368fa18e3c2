"""Load-test a Couchbase cluster with Locust, calling gcouchbase directly.

Each simulated user is a greenlet (Locust runs on gevent), and all the users
of a Locust process share ONE ``gcouchbase.bucket.Bucket``: their requests
are pipelined on one connection per node, as they would be in a gevent web
application. Every operation is reported to Locust's ``request`` event with
its latency, and as a failure when it raises or when what it read back is
not what this user wrote.

Run it (the cluster's connection string, bucket included, is ``--host``)::

    locust -f locustfile.py --headless -u 50 -r 50 --run-time 30s \\
        --host couchbase://127.0.0.1/default --cb-username app --cb-password secret

Options added to Locust's own (also read from the environment):

``--cb-username`` / ``CB_USERNAME``, ``--cb-password`` / ``CB_PASSWORD``
    credentials (none by default);
``--cb-docs`` / ``CB_DOCS``
    documents each user writes and reads back (default 50);
``--cb-prefix`` / ``CB_PREFIX``
    prefix of the keys (default ``locust``).

The locust package monkey-patches the process when it is imported; the
client does not need that, and does not mind it either.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from typing import Any, Callable, Dict, Optional

from gevent.lock import Semaphore
from locust import User, between, events, task
from locust.runners import MasterRunner

from gcouchbase.bucket import Bucket


class WrongValue(Exception):
    """A read returned something other than what this user last wrote."""


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    """Add the ``--cb-*`` options to Locust's command line."""
    parser.add_argument("--cb-username", default="", env_var="CB_USERNAME", help="user name for the bucket")
    parser.add_argument("--cb-password", default="", env_var="CB_PASSWORD", is_secret=True,
                       help="password for the bucket")
    parser.add_argument("--cb-docs", type=int, default=50, env_var="CB_DOCS",
                       help="documents each user writes and reads back")
    parser.add_argument("--cb-prefix", default="locust", env_var="CB_PREFIX", help="prefix of the keys")


_shared_bucket: Optional[Bucket] = None
_opening = Semaphore()
#: Gives each user of this process its own keys.
_user_numbers = itertools.count()


def shared_bucket(environment: Any) -> Bucket:
    """The Bucket every user of this process shares, opened on first use
    (normally when Locust starts: :func:`connect_before_the_test`)."""
    global _shared_bucket
    with _opening:  # users that start together wait for one bootstrap
        if _shared_bucket is None:
            options = environment.parsed_options
            kwargs: Dict[str, Any] = {}
            if options.cb_username:
                kwargs = {"username": options.cb_username, "password": options.cb_password}
            _shared_bucket = Bucket(environment.host, **kwargs)
    return _shared_bucket


@events.init.add_listener
def connect_before_the_test(environment: Any, runner: Any = None, **_kwargs: Any) -> None:
    """Open the shared Bucket when Locust starts, before any user is
    spawned: the bootstrap does not eat into ``--run-time``, and a wrong
    address is reported at once. A distributed run's master runs no users
    and opens nothing."""
    if environment.host and not isinstance(runner, MasterRunner):
        shared_bucket(environment)


@events.quitting.add_listener
def close_bucket(environment: Any, **_kwargs: Any) -> None:
    """Close the shared Bucket when Locust exits."""
    global _shared_bucket
    if _shared_bucket is not None:
        _shared_bucket.close()
        _shared_bucket = None


class CouchbaseUser(User):
    """A user that writes its own documents and reads them back, checking
    each read against what it wrote last."""

    wait_time = between(0.001, 0.01)

    def on_start(self) -> None:
        """Open (or join) the shared Bucket and pick this user's keys."""
        if not self.host:
            raise RuntimeError("give the cluster's connection string as --host, e.g. "
                               "couchbase://127.0.0.1/default")
        self.bucket = shared_bucket(self.environment)
        options = self.environment.parsed_options
        self.keys = ["%s:%d:%d:%d" % (options.cb_prefix, os.getpid(), next(_user_numbers), i)
                     for i in range(max(1, options.cb_docs))]
        self.counter_key = self.keys[0] + ":counter"
        self.counter_value: Optional[int] = None
        #: key -> the document this user wrote there last
        self.written: Dict[str, Any] = {}
        self.sequence = 0

    def measured(self, name: str, operation: Callable[[], Any], check: Callable[[Any], None] = lambda _: None) -> Any:
        """Run ``operation()``, then ``check(result)``, and report it to
        Locust as ``name``: the latency is the operation's alone; a failure
        is whatever either raised. Returns the result (``None`` on failure)."""
        start = time.perf_counter()
        result = error = None
        try:
            result = operation()
        except Exception as exc:  # a greenlet kill (GreenletExit) is not a failure: it goes through
            error = exc
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        if error is None:
            try:
                check(result)
            except WrongValue as exc:
                error = exc
        self.environment.events.request.fire(request_type="couchbase", name=name, response_time=elapsed_ms,
                                             response_length=0, exception=error, context={})
        return None if error is not None else result

    @task(2)
    def write(self) -> None:
        """Upsert one of this user's documents with a new sequence number."""
        self.sequence += 1
        key = self.keys[self.sequence % len(self.keys)]
        doc = {"user": self.keys[0], "seq": self.sequence, "pad": "x" * random.randint(10, 200)}
        self.written.pop(key, None)  # unknown until the write is confirmed
        if self.measured("upsert", lambda: self.bucket.upsert(key, doc)) is not None:
            self.written[key] = doc

    @task(5)
    def read(self) -> None:
        """Read one of this user's documents back and compare it."""
        if not self.written:
            return self.write()
        key = random.choice(list(self.written))
        expected = self.written[key]

        def same(result: Any) -> None:
            if result.value != expected:
                raise WrongValue("%s: read %r, wrote %r" % (key, result.value, expected))

        self.measured("get", lambda: self.bucket.get(key), same)

    @task(1)
    def read_many(self) -> None:
        """Read up to 10 of this user's documents in one ``get_multi``."""
        if not self.written:
            return self.write()
        keys = random.sample(list(self.written), min(10, len(self.written)))
        expected = {k: self.written[k] for k in keys}

        def same(results: Any) -> None:
            got = {k: r.value for k, r in results.items()}
            if got != expected:
                raise WrongValue("get_multi: read %r, wrote %r" % (got, expected))

        self.measured("get_multi", lambda: self.bucket.get_multi(keys), same)

    @task(1)
    def count(self) -> None:
        """Increment this user's counter, checking it moved by exactly one."""
        previous = self.counter_value

        def one_more(result: Any) -> None:
            if previous is not None and result.value != previous + 1:
                raise WrongValue("%s: %r after %r" % (self.counter_key, result.value, previous))

        result = self.measured("counter", lambda: self.bucket.counter(self.counter_key, initial=1), one_more)
        self.counter_value = None if result is None else result.value
