"""Lua scripts of the store, one module per domain; every key comes in KEYS."""
