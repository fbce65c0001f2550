"""The asyncio engine's reader under the policies without reservations: it stops
reading while the receive buffer of the next PDU cannot be had.

Each receive buffer is allocated as its PDU arrives, as a real receive path
allocates skbs, charged to the command it answers (``Admission.on_arrival``
decides). The reader is a receive path (PF_MEMALLOC: the emergency pool counts)
and cannot wait in a protocol callback: if the buffer is not there at once,
:meth:`StallingReader.admit` says no, the stream stops reading, and a task
waits for the memory under the receiver's name. Meanwhile every command in
flight waits on that receiver, not on the target: a reader that waits for memory
only its own commands can free is the receive deadlock.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import cast

from earmark.initiator.admission import Admitted
from earmark.initiator.driver import Driver
from earmark.memory import HostLevel
from earmark.memory.allocation import Charge
from earmark.runtime.initiator_connection import InitiatorStream

__all__ = ["StallingReader"]


class StallingReader:
    """The stream's ``admit`` hook, and the wait it starts when memory is short."""

    __slots__ = ("_driver", "_granted", "_stall", "name")

    def __init__(self, driver: Driver[InitiatorStream], name: str) -> None:
        # Weakly: the device keeps its reader, and a cycle would keep a closed device
        # (and its arena) until the next full garbage collection.
        self._driver = weakref.ref(driver)
        #: Who waits, in the deadlock detector's words, while the reader is stalled.
        self.name = name
        self._stall: asyncio.Task[None] | None = None
        # What the stalled reader was granted, for the PDU it stopped at.
        self._granted: Charge | None = None

    @property
    def stalled(self) -> bool:
        return self._stall is not None

    def admit(self, bhs: memoryview) -> bool:
        """Whether the PDU with this BHS may be read now (False: the stream pauses)."""
        granted, self._granted = self._granted, None
        driver = self._driver()
        assert driver is not None  # the device's stream calls it: the device is there
        session = driver.session
        cmd = cast("Admitted | None", session.answering(bhs) if session is not None else None)
        nbytes = driver.admission.on_arrival(cmd, bhs, granted)
        if nbytes:
            stream = driver.stream
            assert stream is not None
            self._stall = asyncio.get_running_loop().create_task(
                self._receive_when_granted(stream, nbytes), name=self.name)
            return False
        return True

    async def _receive_when_granted(self, stream: InitiatorStream, nbytes: int) -> None:
        driver = self._driver()
        assert driver is not None  # it stops this wait as it closes
        arena = driver.arena
        with arena.memalloc():
            granted = await arena.allocate_charge(HostLevel.WIRE, nbytes, owner=self.name)
        self._stall = None
        if stream is not driver.stream or stream.failed is not None:
            granted.free()
            return
        self._granted = granted  # for the PDU the stream stopped at: it parses that first
        stream.resume()

    def stop(self) -> None:
        """The connection is going: a stalled reader waits no more."""
        stall, self._stall = self._stall, None
        if stall is not None:
            stall.cancel()
        granted, self._granted = self._granted, None
        if granted is not None:
            granted.free()
