"""Lua scripts of the HTTP gateway; every key comes in KEYS."""

from __future__ import annotations

# A token bucket per API token: ``burst`` requests at once, refilled at ``rate`` per
# second. One script reads, refills and takes, so concurrent gateway processes share it.
TAKE_TOKEN = """
-- KEYS[1] the token's bucket hash
-- ARGV[1] now (ms), ARGV[2] rate (requests per second), ARGV[3] burst
-- Returns 0 when a request was taken, else the ms until one is available.
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local level = tonumber(redis.call('HGET', KEYS[1], 'level') or ARGV[3])
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or ARGV[1])
if now > at then level = math.min(burst, level + (now - at) * rate / 1000) end
local wait = 0
if level >= 1 then
  level = level - 1
else
  wait = math.ceil((1 - level) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(math.max(now, at)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
"""
