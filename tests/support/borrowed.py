"""A connection lent to code that asks for `connect()` as a context manager, without closing it."""
from __future__ import annotations


class Borrowed:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        return self.conn

    def __exit__(self, *exc):
        return False
