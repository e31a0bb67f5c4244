"""The Redis store: the only code that holds a Redis client or knows a key name."""
