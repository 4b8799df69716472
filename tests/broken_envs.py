"""A user's env module that fails on import, as one whose simulator is missing does."""

raise RuntimeError("the simulator's licence file was not found")
