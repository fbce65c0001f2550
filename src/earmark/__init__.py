"""earmark: network block storage that cannot hit the writeback memory deadlock."""

__version__ = "0.1.0"
