"""Lua scripts of the HTTP gateway; every key comes in KEYS."""

from __future__ import annotations

# A token check in one round trip: the token's record by the hash of the token, then up
# to ``want`` requests from its bucket (``burst`` at once, refilled at ``rate`` per
# second), shared by every gateway process; at least one, or none and the wait for one.
# An unknown token takes nothing.
AUTHENTICATE = """
-- KEYS[1] hash -> token id hash, KEYS[2] token id -> record hash, KEYS[3] the bucket hash
-- ARGV[1] the token's hash, ARGV[2] now (ms), ARGV[3] rate (per second), ARGV[4] burst,
-- ARGV[5] the most requests to take
-- Returns {} for an unknown token, else {record JSON, ms to wait (0: taken), taken}.
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return {} end
local record = redis.call('HGET', KEYS[2], id)
if not record then return {} end
local now = tonumber(ARGV[2])
local rate = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local level = tonumber(redis.call('HGET', KEYS[3], 'level') or ARGV[4])
local at = tonumber(redis.call('HGET', KEYS[3], 'at') or ARGV[2])
if now > at then level = math.min(burst, level + (now - at) * rate / 1000) end
local wait = 0
local taken = 0
if level >= 1 then
  taken = math.min(math.floor(level), math.max(1, tonumber(ARGV[5])))
  level = level - taken
else
  wait = math.ceil((1 - level) * 1000 / rate)
end
redis.call('HSET', KEYS[3], 'level', tostring(level), 'at', tostring(math.max(now, at)))
redis.call('PEXPIRE', KEYS[3], math.ceil(burst * 1000 / rate) + 1000)
return {record, wait, taken}
"""

# The live-update fan-out's states of many jobs in one command (a pipeline of one HMGET
# per job costs far more to encode): the fields of ARGV, per job, in order.
JOB_STATES = """
-- KEYS[i] job hash i; ARGV the fields to read
-- Returns one list of values (false where absent) per job.
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HMGET', key, unpack(ARGV)) end
return out
"""
