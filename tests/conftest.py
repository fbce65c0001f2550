"""The shared peers (one tgtd fixture, one embedded earmark target) and honest markers.

`peers` says a test starts tgtd or runs libiscsi's tools; `tcp` says it opens loopback
sockets (every `peers` test does). Nobody has to remember them: a test that uses the
`tgtd` fixture is marked `peers`, one that uses an embedded target is marked `tcp`, at
collection. A test that starts a peer or opens a socket some other way (a `Tgtd` of its
own, `earmark serve` in a subprocess, a raw socket) must carry the marker itself, and
if it does not, the attempt fails the test with the marker it is missing, so
`-m "not peers"` and `-m "not tcp"` select exactly the tests that can run without them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any, NoReturn

import pytest

from earmark.runtime.embedded import EmbeddedTarget
from earmark.target.backing import Backing, MemoryBacking
from tests.targets import EmbeddedSpec, TgtdSpec
from tools import peers

PEER_FIXTURES = frozenset({"tgtd"})
TCP_FIXTURES = frozenset({"embedded_target", "embedded_targets"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses = frozenset(getattr(item, "fixturenames", ()))
        if uses & PEER_FIXTURES:
            item.add_marker(pytest.mark.peers)
        if uses & TCP_FIXTURES or item.get_closest_marker("peers") is not None:
            item.add_marker(pytest.mark.tcp)


def _unmarked(marker: str, what: str) -> Callable[..., NoReturn]:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        pytest.fail(f"this test {what} but is not marked `{marker}`: add "
                    f"@pytest.mark.{marker} (or use the shared fixtures in tests/conftest.py, "
                    "which mark it)", pytrace=False)

    return refuse


@pytest.fixture(autouse=True)
def _markers_are_honest(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse, for the test's own body and function-scoped fixtures, what its markers deny."""
    node = request.node
    if node.get_closest_marker("peers") is None:
        monkeypatch.setattr(peers.Tgtd, "start", _unmarked("peers", "starts tgtd"))
        monkeypatch.setattr(peers, "_run", _unmarked("peers", "runs a peer tool"))
    if node.get_closest_marker("tcp") is None:
        for method in ("bind", "connect", "connect_ex"):
            monkeypatch.setattr(socket.socket, method,
                                _unmarked("tcp", f"opens a socket ({method})"))


@pytest.fixture(scope="module")
def tgtd(request: pytest.FixtureRequest) -> Iterator[peers.Tgtd]:
    """tgtd on 127.0.0.1, a free port and its own control port, one target with LUN 1.

    Shared by the module (ask for another spec with `tests.targets.tgtd_with`). Stopping
    it deletes the target with tgtadm first: tgtd ignores SIGTERM while it has targets.
    """
    spec: TgtdSpec = getattr(request, "param", TgtdSpec())
    with peers.Tgtd(spec.lun_bytes, iqn=spec.iqn, chap=spec.chap, mutual=spec.mutual) as t:
        yield t


def _start(stack: ExitStack, backing: Backing, **options: Any) -> EmbeddedTarget:
    """Started now; at the end stopped, then its backing closed (stopping syncs it)."""
    stack.callback(backing.close)
    return stack.enter_context(EmbeddedTarget(backing, **options))


@pytest.fixture(scope="module")
def embedded_target(request: pytest.FixtureRequest) -> Iterator[EmbeddedTarget]:
    """An earmark target on its own thread and a free loopback port, shared by the module
    (ask for another spec with `tests.targets.embedded_with`)."""
    spec: EmbeddedSpec = getattr(request, "param", EmbeddedSpec())
    with ExitStack() as stack:
        yield _start(stack, MemoryBacking(spec.lun_bytes), memory=spec.memory, iqn=spec.iqn,
                     chap=spec.chap)


@pytest.fixture
def embedded_targets() -> Iterator[Callable[..., EmbeddedTarget]]:
    """Starts embedded targets on a backing of the test's own (EmbeddedTarget's arguments);
    when the test ends each is stopped and its backing closed."""
    with ExitStack() as stack:
        yield lambda backing, **options: _start(stack, backing, **options)
