"""Lua scripts of spend and traffic control (budgets, concurrency limits, fleet rate).

Each opens with a comment naming its KEYS and ARGV; every key a script touches comes in
KEYS (the store computes the list from :mod:`orchestrator.store.keys`).

A limit key's waiting jobs are one sorted set for all fairness groups, every member at
score 0 as ``<group>|<sequence>|<job id>``: a lexical range reads one group's jobs
oldest first, so the group that comes next (known only inside the script) needs no
key of its own. Group names (tag values) and job ids never hold a ``|``.
"""

from __future__ import annotations

RESERVE_BUDGET = """
-- KEYS[1] holds hash, KEYS[2] hold-times zset; for cap i (1..n): KEYS[1+2i] the ledger
-- rollup of the cap's scope and period, KEYS[2+2i] the scope/period reserved counter
-- ARGV[1] job id, ARGV[2] hold (micro), ARGV[3] now (ms), ARGV[4] n, ARGV[4+i] cap i (micro)
-- Returns {1} when held (or already held), {0, i, left micro} when cap i would be passed.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {1} end
local amount = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
for i = 1, n do
  local costs = redis.call('HMGET', KEYS[1 + 2 * i], 'internal_cost_micro',
                           'model_cost_micro', 'sandbox_cost_micro', 'tool_cost_micro')
  local spent = 0
  for _, v in ipairs(costs) do spent = spent + tonumber(v or '0') end
  local reserved = tonumber(redis.call('GET', KEYS[2 + 2 * i]) or '0')
  local cap = tonumber(ARGV[4 + i])
  if spent + reserved + amount > cap then
    return {0, i, string.format('%.0f', cap - spent - reserved)}
  end
end
local held = {}
for i = 1, n do
  redis.call('INCRBY', KEYS[2 + 2 * i], amount)
  table.insert(held, KEYS[2 + 2 * i])
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({amount = amount, keys = held}))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return {1}
"""

RELEASE_HOLD = """
-- KEYS[1] holds hash, KEYS[2] hold-times zset, KEYS[3..] the reserved counters of the hold
-- ARGV[1] job id, ARGV[2] the hold's JSON as read by the caller, ARGV[3] amount (micro)
-- Returns 1 if released, 0 if the hold was already gone (released by someone else).
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
for i = 3, #KEYS do redis.call('DECRBY', KEYS[i], ARGV[3]) end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# A hold on caps spanning tenants, in the control keys while the store has several cells
# (docs/scaling.md): the turn was posted in its cell; its cost is added here to the rows
# those caps read, and the hold released, in one step that runs once per hold.
SETTLE_HOLD = """
-- KEYS[1] holds hash, KEYS[2] hold-times zset, KEYS[3..2+m] the rows the turn's cost is
-- added to, KEYS[3+m..] the reserved counters of the hold
-- ARGV[1] job id, ARGV[2] the hold's JSON as read by the caller, ARGV[3] amount (micro),
-- ARGV[4] m, ARGV[5..8] the turn's internal, model, sandbox and tool cost (micro)
-- Returns 1 if settled, 0 if the hold was already gone (settled by someone else).
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local m = tonumber(ARGV[4])
local fields = {'internal_cost_micro', 'model_cost_micro', 'sandbox_cost_micro',
                'tool_cost_micro'}
for i = 3, 2 + m do
  for f = 1, 4 do
    if ARGV[4 + f] ~= '0' then redis.call('HINCRBY', KEYS[i], fields[f], ARGV[4 + f]) end
  end
end
for i = 3 + m, #KEYS do redis.call('DECRBY', KEYS[i], ARGV[3]) end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

ACQUIRE_SLOTS = """
-- KEYS[1] limits hash, KEYS[2] parked hash, KEYS[3] waiting sequence counter; for limit
-- key i (1..n): KEYS[1+3i] its running set, KEYS[2+3i] its groups list, KEYS[3+3i] its
-- waiting set
-- ARGV[1] job id, ARGV[2] fairness group, ARGV[3] n, ARGV[3+i] limit key i
-- Returns {1} when the job holds a slot of every limited key, {0, key} when it was parked
-- (or already is) in the waiting set of the first full key.
local n = tonumber(ARGV[3])
local job, group = ARGV[1], ARGV[2]
local take = {}
for i = 1, n do
  local limit = tonumber(redis.call('HGET', KEYS[1], ARGV[3 + i]) or '-1')
  local running = KEYS[1 + 3 * i]
  if limit >= 0 and redis.call('SISMEMBER', running, job) == 0 then
    if redis.call('SCARD', running) >= limit then
      if redis.call('HSETNX', KEYS[2], job, ARGV[3 + i]) == 1 then
        local seq = redis.call('INCR', KEYS[3])
        redis.call('ZADD', KEYS[3 + 3 * i], 0, string.format('%s|%016d|%s', group, seq, job))
        if not redis.call('LPOS', KEYS[2 + 3 * i], group) then
          redis.call('RPUSH', KEYS[2 + 3 * i], group)
        end
      end
      return {0, ARGV[3 + i]}
    end
    table.insert(take, running)
  end
end
for _, running in ipairs(take) do redis.call('SADD', running, job) end
return {1}
"""

PROMOTE_WAITING = """
-- KEYS[1] limits hash, KEYS[2] parked hash, KEYS[3] outbox zset; for limit key i (1..n):
-- KEYS[1+3i] its running set, KEYS[2+3i] its groups list, KEYS[3+3i] its waiting set
-- ARGV[1] job id leaving its slots, ARGV[2] now (ms), ARGV[3] n, ARGV[3+i] limit key i
-- Frees the job's slots and hands each to the next waiting job, round-robin across
-- fairness groups (one busy tenant cannot starve the others). A promoted job gets the
-- slot now and goes into the outbox, so it is re-sent even if the caller dies here.
-- Returns the promoted job ids.
local n = tonumber(ARGV[3])
local promoted = {}
redis.call('HDEL', KEYS[2], ARGV[1])
for i = 1, n do
  local running, groups, waiting = KEYS[1 + 3 * i], KEYS[2 + 3 * i], KEYS[3 + 3 * i]
  redis.call('SREM', running, ARGV[1])
  local limit = tonumber(redis.call('HGET', KEYS[1], ARGV[3 + i]) or '-1')
  local guard = redis.call('LLEN', groups)
  while guard > 0 and (limit < 0 or redis.call('SCARD', running) < limit) do
    guard = guard - 1
    local group = redis.call('LMOVE', groups, groups, 'LEFT', 'RIGHT')
    if not group then break end
    -- This group's members, oldest first: '<group>|' then digits, all below byte 255.
    local low, high = '[' .. group .. '|', '[' .. group .. '|\\255'
    local first = redis.call('ZRANGEBYLEX', waiting, low, high, 'LIMIT', 0, 1)[1]
    local nxt = nil
    if first then
      redis.call('ZREM', waiting, first)
      nxt = string.match(first, '([^|]*)$')
    end
    if redis.call('ZLEXCOUNT', waiting, low, high) == 0 then
      redis.call('LREM', groups, 0, group)
      guard = redis.call('LLEN', groups)
    end
    if nxt then
      redis.call('HDEL', KEYS[2], nxt)
      redis.call('SADD', running, nxt)
      redis.call('ZADD', KEYS[3], ARGV[2], nxt)
      table.insert(promoted, nxt)
      guard = redis.call('LLEN', groups)
    end
  end
end
return promoted
"""

# The repair of a slot whose holder's record is gone (deleted by hand, or lost with a
# Redis that came back without it): no end of that job will ever free it.
RELEASE_GONE = (
    """
-- KEYS and ARGV as PROMOTE_WAITING's for one limit key (n = 1), and KEYS[7] the job's hash
-- Frees the slot only while the job's record is gone and the job holds it, so a live
-- job's slot stays and a second sweep frees nothing. Returns nil when nothing was freed,
-- else the job ids promoted into the slot (maybe none).
if redis.call('EXISTS', KEYS[7]) == 1 or redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0 then
  return false
end
"""
    + PROMOTE_WAITING
)

# A job that leaves a limit's queue without a slot (cancelled or expired while waiting).
LEAVE_WAITING = """
-- KEYS[1] parked hash, KEYS[2] the waiting set of the limit key the job waits on,
-- KEYS[3] that key's groups list
-- ARGV[1] job id, ARGV[2] the limit key (as read from the parked hash), ARGV[3] its group
-- Returns 1 if the job left the waiting set, 0 if it was not waiting on that key.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local low, high = '[' .. ARGV[3] .. '|', '[' .. ARGV[3] .. '|\\255'
local suffix = '|' .. ARGV[1]
for _, member in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], low, high)) do
  if string.sub(member, -#suffix) == suffix then
    redis.call('ZREM', KEYS[2], member)
    break
  end
end
if redis.call('ZLEXCOUNT', KEYS[2], low, high) == 0 then redis.call('LREM', KEYS[3], 0, ARGV[3]) end
return 1
"""

RATE_ACQUIRE = """
-- KEYS[1] the fleet rate hash (fields tat, pause_until)
-- ARGV[1] now (ms), ARGV[2] ms between requests (1000 / rate), ARGV[3] burst
-- GCRA: returns 0 when this request may go now (and counts it), else ms to wait.
local now = tonumber(ARGV[1])
local pause = tonumber(redis.call('HGET', KEYS[1], 'pause_until') or '0')
if pause > now then return math.ceil(pause - now) end
local interval = tonumber(ARGV[2])
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
if tat < now then tat = now end
local allow_at = tat - (tonumber(ARGV[3]) - 1) * interval
if now < allow_at then return math.ceil(allow_at - now) end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat + interval))
return 0
"""

RATE_PAUSE = """
-- KEYS[1] the fleet rate hash
-- ARGV[1] pause until (ms)
-- Extends the fleet-wide pause (never shortens it). Returns the pause end (ms).
local current = tonumber(redis.call('HGET', KEYS[1], 'pause_until') or '0')
local wanted = tonumber(ARGV[1])
if wanted > current then
  redis.call('HSET', KEYS[1], 'pause_until', ARGV[1])
  return wanted
end
return current
"""
