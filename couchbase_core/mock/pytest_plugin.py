"""pytest plugin: emulated Couchbase clusters as fixtures.

Installed with the package (entry point ``pytest11``). Fixtures:

``couchbase_mock``
    A running :class:`~couchbase_core.mock.MockCluster` (one node, a
    ``default`` couchbase bucket, one replica). It is shared by the test
    session; faults a test injects are cleared after it. A test marked
    ``@pytest.mark.couchbase_mock(nodes=3, replicas=1, ...)`` gets a cluster
    of its own built with those :class:`MockCluster` arguments instead.

``couchbase_mock_session``
    The shared session cluster itself.

pytest loads this module in every test run of an environment where
gcouchbase is installed, so it imports nothing at module level beyond
pytest and the typing module: the emulator (and its JavaScript engine) is
imported and started only when a test asks for one of the fixtures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core.mock import MockCluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "couchbase_mock(**options): give the test its own emulated cluster built with these "
        "MockCluster options")


@pytest.fixture(scope="session")
def couchbase_mock_session() -> Iterator[MockCluster]:
    """One emulated cluster for the whole session."""
    from couchbase_core.mock import MockCluster

    with MockCluster() as cluster:
        yield cluster


@pytest.fixture
def couchbase_mock(request: pytest.FixtureRequest) -> Iterator[MockCluster]:
    """A running emulated cluster (see the module docs)."""
    marker = request.node.get_closest_marker("couchbase_mock")
    if marker is not None:
        from couchbase_core.mock import MockCluster

        with MockCluster(**marker.kwargs) as cluster:
            yield cluster
        return
    cluster = request.getfixturevalue("couchbase_mock_session")
    try:
        yield cluster
    finally:
        cluster.clear_faults()
