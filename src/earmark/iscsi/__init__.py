"""Sans-I/O iSCSI protocol core (RFC 7143).

Everything here turns bytes into objects and objects into bytes, so the same
code runs on real TCP and in the deterministic simulator; only ``runtime/``
touches sockets and clocks.
"""
