"""CRC32C digests and 4-byte padding (RFC 7143 §11.1, §13.1).

The digest goes on the wire least-significant byte first: libiscsi 1.19
(``iscsi_pdu_update_headerdigest``/``iscsi_process_pdu``) writes and reads it
that way and tgt stores the native little-endian word, so that is what
interoperates. Data digests cover the data *and* its padding.
"""

import struct
from collections.abc import Callable

from .pdu import WireBytes

DIGEST_LENGTH = 4
_LE32 = struct.Struct("<I")
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")


_crc32c: Callable[[WireBytes, int], int] | None = None


def crc32c(data: WireBytes, value: int = 0) -> int:
    """CRC32C of `data`, continuing from `value`: the crc32c package's, imported on the
    first digest. Most sessions negotiate none, and the package's import (it reads its
    own version through importlib.metadata) keeps 4 MB resident in a long-lived target."""
    global _crc32c
    impl = _crc32c
    if impl is None:
        from crc32c import crc32c as loaded

        impl = _crc32c = loaded
    return impl(data, value)


def padding(length: int) -> bytes:
    """Zero bytes that pad a segment of ``length`` bytes to a multiple of 4."""
    return _PADS[length & 3]


def padded_length(length: int) -> int:
    return (length + 3) & ~3


def header_digest(header: bytes | memoryview) -> bytes:
    """Digest of BHS + AHS."""
    return _LE32.pack(crc32c(header))


def data_digest(data: bytes | memoryview) -> bytes:
    """Digest of a data segment followed by its padding."""
    pad = _PADS[len(data) & 3]
    crc = crc32c(data)
    return _LE32.pack(crc32c(pad, crc) if pad else crc)
