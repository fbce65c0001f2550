"""The FUSE protocol, the filesystem's answers and when to poll are sans-I/O, as the iSCSI
core is."""

from __future__ import annotations

from pathlib import Path

import earmark.attach.fs
import earmark.attach.protocol
import earmark.busy_poll
from tests.test_layers import IO_MODULES, imported


def test_protocol_fs_and_poll_import_no_socket_loop_or_clock() -> None:
    for module in (earmark.attach.protocol, earmark.attach.fs, earmark.busy_poll):
        assert module.__file__ is not None
        deps = {dep.split(".")[0] for dep in imported(Path(module.__file__))}
        assert not deps & IO_MODULES, (module.__name__, deps & IO_MODULES)
