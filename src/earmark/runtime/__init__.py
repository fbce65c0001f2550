"""asyncio adapters: the only code with sockets, clocks and threads."""
