"""The Lua scripts that make multi-key writes atomic. Each is registered once per
client (EVALSHA, with a transparent re-load when Redis has forgotten it after a restart
or failover) and opens with a comment naming its KEYS and ARGV.
"""

from __future__ import annotations

# Status order: a job only ever moves forward; terminal states never change again.
TRANSITION = """
-- KEYS[1] job hash, KEYS[2] job history stream, KEYS[3] states count hash
-- ARGV[1] new status, ARGV[2] now (ms), ARGV[3] detail ('' for none), ARGV[4] history maxlen
-- Returns 1 if the status changed, 0 if it already was that, -1 if refused (backwards/terminal).
local rank = {queued=0, submitted=1, running=2, completed=3, failed=3, cancelled=3}
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return -1 end
local new = ARGV[1]
if current == new then return 0 end
if rank[current] >= 3 or rank[new] < rank[current] then return -1 end
redis.call('HSET', KEYS[1], 'status', new, 'at_' .. new, ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
           'status', new, 'at', ARGV[2], 'detail', ARGV[3])
redis.call('HINCRBY', KEYS[3], current, -1)
redis.call('HINCRBY', KEYS[3], new, 1)
return 1
"""

# The SSE index is the dedupe key: update n is stream entry 0-(n+1), and the worker
# hash's 'relayed' counter says how many are stored, so a replay adds nothing.
APPEND_UPDATES = """
-- KEYS[1] worker hash, KEYS[2] updates stream
-- ARGV[1] index of the first payload, ARGV[2] stream maxlen, ARGV[3..] payloads (JSON)
-- Returns the number of updates stored after the call; raises on a gap.
local relayed = tonumber(redis.call('HGET', KEYS[1], 'relayed') or '0')
local first = tonumber(ARGV[1])
for i = 3, #ARGV do
  local index = first + i - 3
  if index > relayed then
    return redis.error_reply('GAP expected update ' .. relayed .. ' got ' .. index)
  end
  if index == relayed then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '0-' .. (index + 1), 'data', ARGV[i])
    relayed = relayed + 1
  end
end
redis.call('HSET', KEYS[1], 'relayed', relayed)
return relayed
"""

# One turn's cost is the difference of cumulative snapshots; posting it is keyed by
# the turn id so a replay is a no-op, and 'counted:*' on the worker only moves forward.
POST_TURN = """
-- KEYS[1] worker hash, KEYS[2] ledger turns hash, KEYS[3] ledger total hash,
-- KEYS[4 .. 3+n] rollup hashes, KEYS[4+n .. 3+2n] index sets (one per rollup)
-- ARGV[1] turn id, ARGV[2] n, ARGV[3] JSON {field: cumulative integer},
-- ARGV[4 .. 3+n] the index member of each rollup
-- Returns the JSON of the posted deltas, or false if this turn was already posted.
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return false end
local n = tonumber(ARGV[2])
local cumulative = cjson.decode(ARGV[3])
local deltas = {}
for field, value in pairs(cumulative) do
  local counted = tonumber(redis.call('HGET', KEYS[1], 'counted:' .. field) or '0')
  local delta = value - counted
  if delta < 0 then delta = 0 else
    redis.call('HSET', KEYS[1], 'counted:' .. field, string.format('%.0f', value))
  end
  deltas[field] = delta
  local text = string.format('%.0f', delta)
  redis.call('HINCRBY', KEYS[3], field, text)
  for i = 1, n do redis.call('HINCRBY', KEYS[3 + i], field, text) end
end
redis.call('HINCRBY', KEYS[3], 'turns', 1)
for i = 1, n do
  redis.call('HINCRBY', KEYS[3 + i], 'turns', 1)
  redis.call('SADD', KEYS[3 + n + i], ARGV[3 + i])
end
local posted = cjson.encode(deltas)
redis.call('HSET', KEYS[2], ARGV[1], posted)
return posted
"""

# Leases on stream following: a sorted set scores each job by lease expiry (ms) and a
# hash names the owner. Expired or never-claimed entries are up for grabs.
CLAIM_FOLLOWS = """
-- KEYS[1] follows zset (job -> lease expiry ms), KEYS[2] owners hash (job -> owner)
-- ARGV[1] now (ms), ARGV[2] new expiry (ms), ARGV[3] max to claim, ARGV[4] owner
-- Returns the claimed job ids.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, job in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], job)
  redis.call('HSET', KEYS[2], job, ARGV[4])
end
return due
"""

RENEW_FOLLOWS = """
-- KEYS[1] follows zset, KEYS[2] owners hash
-- ARGV[1] new expiry (ms), ARGV[2] owner, ARGV[3..] job ids held by that owner
-- Returns the job ids whose lease was lost (owned by someone else, or released).
local lost = {}
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[2] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""

RELEASE_FOLLOW = """
-- KEYS[1] follows zset, KEYS[2] owners hash
-- ARGV[1] job id, ARGV[2] owner ('' releases whoever holds it)
-- Returns 1 if released.
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if ARGV[2] ~= '' and owner and owner ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""
