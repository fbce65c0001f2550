"""`earmark attach`: an iSCSI LUN as one file under FUSE, and a loop device over it.

``protocol`` (the FUSE wire format) and ``fs`` (what the one-file filesystem
answers, the block arithmetic) are sans-I/O; ``serve`` is the adapter between
/dev/fuse and the asyncio initiator; ``mount``, ``loopdev`` and ``pinned``
drive fusermount3, losetup and the process's memory; ``daemon`` is the life of
one attachment.
"""
