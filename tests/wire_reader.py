"""The other end of a connection in a test: what one side sent, read back as PDUs
through the one framer (:mod:`earmark.iscsi.stream`)."""

from __future__ import annotations

import mmap

from earmark.iscsi.errors import ProtocolError
from earmark.iscsi.pdu import Pdu, WireBytes
from earmark.iscsi.stream import Framer, detached, receive_buffer_bytes


class WireReader:
    """Bytes in, the PDUs they complete out (data copied); any protocol error raises."""

    def __init__(self, max_data_segment: int, header_digest: bool = False,
                 data_digest: bool = False) -> None:
        self._max = max_data_segment
        # Anonymous memory: pages are only touched as far as PDUs reach.
        buffer = memoryview(mmap.mmap(-1, receive_buffer_bytes(max_data_segment, 1)))
        self._framer = Framer(buffer, self._pdu, self._error, max_data_segment=max_data_segment)
        self._framer.set_full_feature(max_data_segment, header_digest, data_digest)
        self._pdus: list[Pdu] = []
        self._errors: list[ProtocolError] = []

    def set_digests(self, header_digest: bool, data_digest: bool) -> None:
        self._framer.set_full_feature(self._max, header_digest, data_digest)

    def feed(self, data: WireBytes) -> list[Pdu]:
        self._framer.feed(data)
        if self._errors:
            raise self._errors[0]
        pdus, self._pdus = self._pdus, []
        return pdus

    def _pdu(self, pdu: Pdu, placed: bool) -> None:
        self._pdus.append(detached(pdu))

    def _error(self, header: memoryview, exc: ProtocolError) -> None:
        self._errors.append(exc)
