"""The iSCSI LUN field: eight bytes in SAM encoding (earmark.scsi.lun)."""

from earmark.scsi.lun import MAX_FLAT_LUN, lun_from_u64, lun_to_u64

from .errors import ProtocolError

__all__ = ["MAX_FLAT_LUN", "decode_lun", "encode_lun", "lun_from_u64", "lun_to_u64"]


def encode_lun(lun: int) -> bytes:
    return lun_to_u64(lun).to_bytes(8, "big")


def decode_lun(raw: bytes | memoryview) -> int:
    if len(raw) != 8:
        raise ProtocolError(f"LUN field is {len(raw)} bytes, expected 8")
    return lun_from_u64(int.from_bytes(raw, "big"))
