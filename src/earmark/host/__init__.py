"""The initiator host: page cache with dirty tracking, writeback and reclaim, under a policy."""
