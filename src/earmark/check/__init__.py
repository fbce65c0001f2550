"""The exhaustive checker: every schedule of a small system, under each memory policy."""
