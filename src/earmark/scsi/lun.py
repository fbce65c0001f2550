"""SAM LUN encoding of the 8-byte LUN field (SAM-5 §4.7), shared by iSCSI and REPORT LUNS.

A LUN field that is neither peripheral (bus 0) nor flat-space addressing is not
an error a connection should die of: the target must answer it with LOGICAL
UNIT NOT SUPPORTED. So it decodes to a negative number (``-1 - raw64``) that no
logical unit has and that still encodes back to the same eight bytes.
"""

MAX_FLAT_LUN = 0x3FFF
_LOW48 = (1 << 48) - 1


def lun_from_u64(raw: int) -> int:
    """Decode the LUN field read as one big-endian 64-bit integer."""
    if raw & _LOW48 == 0:
        top = raw >> 48
        if top < 0x100:
            return top
        if top >> 14 == 1:
            return top & MAX_FLAT_LUN
    return -1 - raw


def lun_to_u64(lun: int) -> int:
    """Encode a LUN the way libiscsi and Linux do: peripheral below 256, else flat."""
    if lun < 0:
        return -1 - lun
    if lun < 0x100:
        return lun << 48
    if lun <= MAX_FLAT_LUN:
        return (0x4000 | lun) << 48
    raise ValueError(f"LUN {lun} is beyond flat-space addressing (max {MAX_FLAT_LUN})")
