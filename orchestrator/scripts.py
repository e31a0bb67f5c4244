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

# --- schedules (see docs/schedules.md) -------------------------------------------------

# One round trip per beat tick: what is due, which claims were left unsent by a beat
# that died (taken over and re-stamped, so one beat at a time re-sends them), when the
# next future run is, and which buffered runs wait for their previous run.
SCHEDULE_PEEK = """
-- KEYS[1] due zset (id -> next run ms), KEYS[2] pending zset (id|slot -> claim ms),
-- KEYS[3] buffered zset (id -> slot ms)
-- ARGV[1] now (ms), ARGV[2] batch size, ARGV[3] claims stamped at or before this (ms)
-- are taken over, ARGV[4] how many buffered entries to return
-- Returns {due (flat id, score, ...), taken-over members, next future run ms or '',
--          buffered (flat id, slot, ...)}.
local n = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, n)
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, n)
for _, member in ipairs(stale) do
  redis.call('ZADD', KEYS[2], 'XX', ARGV[1], member)
end
local upcoming = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf',
                            'WITHSCORES', 'LIMIT', 0, 1)
local next_run = ''
if #upcoming > 0 then next_run = upcoming[2] end
local buffered = {}
if tonumber(ARGV[4]) > 0 then
  buffered = redis.call('ZRANGE', KEYS[3], 0, tonumber(ARGV[4]) - 1, 'WITHSCORES')
end
return {due, stale, next_run, buffered}
"""

# Compare-and-advance: a schedule is claimed only if its next run is still the one the
# beat read, so of any number of beats exactly one claims each slot. The claim is
# recorded in the pending set in the same step, so a beat that dies before sending
# loses nothing: another beat takes the claim over and sends it.
SCHEDULE_CLAIM = """
-- KEYS[1] due zset, KEYS[2] pending zset, KEYS[3..] the hash of each schedule, in order
-- ARGV[1] now (ms), then 5 values per schedule: id, the next-run ms it was read with,
-- its new next-run ms ('' if none: the one-shot is done), slots missed, slots to fire
-- (comma-separated ms, may be '')
-- Returns the pending members (id|slot) claimed.
local out = {}
local count = (#ARGV - 1) / 5
for i = 0, count - 1 do
  local base = 2 + i * 5
  local id, expected, new_next = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local missed, hash = tonumber(ARGV[base + 3]), KEYS[3 + i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) == tonumber(expected) then
    if new_next == '' then
      redis.call('ZREM', KEYS[1], id)
      redis.call('HSET', hash, 'status', 'done')
    else
      redis.call('ZADD', KEYS[1], new_next, id)
      redis.call('HSET', hash, 'next_run_ms', new_next)
    end
    if missed > 0 then redis.call('HINCRBY', hash, 'missed', missed) end
    for slot in string.gmatch(ARGV[base + 4], '[^,]+') do
      local member = id .. '|' .. slot
      redis.call('ZADD', KEYS[2], ARGV[1], member)
      redis.call('HINCRBY', hash, 'claimed', 1)
      table.insert(out, member)
    end
  end
end
return out
"""

# The run task's decision for one (schedule, slot), made once: the record written here
# is the dedupe (a re-sent slot finds it), and 'last_job' is reserved in the same step
# so two runs of one schedule never overlap. A job whose status is not terminal is
# still going; a reservation whose job was never made stops blocking after ARGV[6] ms.
SCHEDULE_DECIDE = """
-- KEYS[1] schedule hash, KEYS[2] runs hash (slot -> JSON), KEYS[3] run slots zset,
-- KEYS[4] buffered zset, KEYS[5] hash of the job named by last_job (any key if none)
-- ARGV[1] schedule id, ARGV[2] slot (ms), ARGV[3] now (ms), ARGV[4] last_job as read,
-- ARGV[5] runs kept in the history, ARGV[6] reservation timeout (ms)
-- Returns {verdict, record JSON}: verdict is 'fire' (make the run's job now),
-- 'skipped', 'buffered', 'wait' (still buffered: previous run going, or paused),
-- 'duplicate', 'gone' (unknown or cancelled) or 'retry' (last_job changed since read).
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'cancelled' then return {'gone', ''} end
local slot = ARGV[2]
local last = redis.call('HGET', KEYS[1], 'last_job') or ''
if last ~= ARGV[4] then return {'retry', ''} end
local function busy()
  if last == '' or last == 'slot:' .. slot then return false end
  if string.sub(last, 1, 5) == 'slot:' then
    local at = tonumber(redis.call('HGET', KEYS[1], 'reserved_at') or '0')
    return tonumber(ARGV[3]) - at < tonumber(ARGV[6])
  end
  local job = redis.call('HGET', KEYS[5], 'status')
  return job == 'queued' or job == 'submitted' or job == 'running'
end
local function reserve(record)
  record.status = 'fired'
  record.fired_at = ARGV[3]
  redis.call('HSET', KEYS[1], 'last_job', 'slot:' .. slot, 'reserved_at', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'runs', 1)
end
local raw = redis.call('HGET', KEYS[2], slot)
if raw then
  local record = cjson.decode(raw)
  if record.status == 'buffered' then
    if status == 'paused' or busy() then return {'wait', raw} end
    reserve(record)
    if tonumber(redis.call('ZSCORE', KEYS[4], ARGV[1]) or '-1') == tonumber(slot) then
      redis.call('ZREM', KEYS[4], ARGV[1])
    end
    local text = cjson.encode(record)
    redis.call('HSET', KEYS[2], slot, text)
    return {'fire', text}
  end
  if record.status == 'fired' and record.job_id == '' then return {'fire', raw} end
  redis.call('HINCRBY', KEYS[1], 'duplicates', 1)
  return {'duplicate', raw}
end
if tonumber(slot) <= tonumber(redis.call('HGET', KEYS[1], 'trimmed_below') or '-1') then
  redis.call('HINCRBY', KEYS[1], 'duplicates', 1)
  return {'duplicate', ''}
end
local record = {slot = slot, fired_at = ARGV[3], status = 'skipped', job_id = ''}
local verdict = 'skipped'
if not busy() then
  reserve(record)
  verdict = 'fire'
elseif redis.call('HGET', KEYS[1], 'overlap') == 'buffer'
       and not redis.call('ZSCORE', KEYS[4], ARGV[1]) then
  record.status = 'buffered'
  verdict = 'buffered'
  redis.call('ZADD', KEYS[4], slot, ARGV[1])
else
  redis.call('HINCRBY', KEYS[1], 'skipped', 1)
end
local text = cjson.encode(record)
redis.call('HSET', KEYS[2], slot, text)
redis.call('ZADD', KEYS[3], slot, slot)
-- Keep the newest ARGV[5] runs; the newest slot dropped becomes a dedupe floor.
local extra = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[5])
if extra > 0 then
  local old = redis.call('ZRANGE', KEYS[3], 0, extra - 1)
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, extra - 1)
  redis.call('HSET', KEYS[1], 'trimmed_below', old[#old])
end
return {verdict, text}
"""

SCHEDULE_SET_JOB = """
-- KEYS[1] schedule hash, KEYS[2] runs hash
-- ARGV[1] slot (ms), ARGV[2] job id ('' if none was made), ARGV[3] error ('' for none)
-- Returns 1 if the run's record was updated. The reservation of this slot in
-- last_job becomes the job id (or is released when no job was made).
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return 0 end
local record = cjson.decode(raw)
record.job_id = ARGV[2]
if ARGV[3] ~= '' and record.status ~= 'error' then
  record.status = 'error'
  record.error = ARGV[3]
  redis.call('HINCRBY', KEYS[1], 'runs', -1)
  redis.call('HINCRBY', KEYS[1], 'errors', 1)
end
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(record))
if redis.call('HGET', KEYS[1], 'last_job') == 'slot:' .. ARGV[1] then
  redis.call('HSET', KEYS[1], 'last_job', ARGV[2])
end
return 1
"""

SCHEDULE_STATE = """
-- KEYS[1] schedule hash, KEYS[2] due zset, KEYS[3] buffered zset
-- ARGV[1] schedule id, ARGV[2] 'pause' | 'resume' | 'cancel', ARGV[3] next run ms (resume)
-- Returns 1 if changed, 0 if not (already so, or done/cancelled), -1 if unknown.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
local action = ARGV[2]
if action == 'pause' then
  if status ~= 'active' then return 0 end
  redis.call('HSET', KEYS[1], 'status', 'paused')
  redis.call('ZREM', KEYS[2], ARGV[1])
elseif action == 'resume' then
  if status ~= 'paused' then return 0 end
  redis.call('HSET', KEYS[1], 'status', 'active', 'next_run_ms', ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else
  if status == 'cancelled' or status == 'done' then return 0 end
  redis.call('HSET', KEYS[1], 'status', 'cancelled')
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return 1
"""

# --- reconcile (see orchestrator/reconcile.py) -----------------------------------------

# The upstream is the source of truth for money. What reached the ledger for a worker is
# the larger of its own ledger row and its 'counted:*' (both are written by POST_TURN in
# one step, and damage only ever loses data); the rest of the worker's cumulative figure
# is posted as a correction to the total and every rollup of its latest job, the worker
# row alone is brought to the upstream figure, and 'counted:*' moves to it. Atomic, so it
# is safe beside a finalize posting the same worker: whichever runs second adds nothing.
RECONCILE_WORKER = """
-- KEYS[1] worker hash, KEYS[2] ledger turns hash, KEYS[3] ledger total hash,
-- KEYS[4 .. 3+n] rollup hashes of the worker's latest job (one is the worker's own row),
-- KEYS[4+n .. 3+2n] index sets (one per rollup)
-- ARGV[1] correction id prefix ('reconcile:<worker>:'), ARGV[2] n,
-- ARGV[3] JSON {field: upstream cumulative integer}, ARGV[4] position (1..n) of the
-- worker's own row among the rollups, ARGV[5 .. 4+n] the index member of each rollup
-- Returns {correction id, JSON {posted, row, counted}} (integers as strings: cjson would
-- print large ones in exponent form), or false if nothing differed.
local n = tonumber(ARGV[2])
local upstream = cjson.decode(ARGV[3])
local own = KEYS[3 + tonumber(ARGV[4])]
local posted, row_fix, counted_fix = {}, {}, {}
local changed = false
for field, value in pairs(upstream) do
  local counted = tonumber(redis.call('HGET', KEYS[1], 'counted:' .. field) or '0')
  local row = tonumber(redis.call('HGET', own, field) or '0')
  local missing = value - math.max(counted, row)
  if missing ~= 0 then
    local text = string.format('%.0f', missing)
    redis.call('HINCRBY', KEYS[3], field, text)
    for i = 1, n do redis.call('HINCRBY', KEYS[3 + i], field, text) end
    posted[field] = text
    changed = true
  end
  local fix = value - (row + missing)
  if fix ~= 0 then
    row_fix[field] = string.format('%.0f', fix)
    redis.call('HINCRBY', own, field, row_fix[field])
    changed = true
  end
  if counted ~= value then
    redis.call('HSET', KEYS[1], 'counted:' .. field, string.format('%.0f', value))
    counted_fix[field] = string.format('%.0f', value - counted)
    changed = true
  end
end
if not changed then return false end
for i = 1, n do redis.call('SADD', KEYS[3 + n + i], ARGV[4 + i]) end
local id = ARGV[1] .. redis.call('HINCRBY', KEYS[1], 'corrections', 1)
local record = cjson.encode({posted = posted, row = row_fix, counted = counted_fix})
redis.call('HSET', KEYS[2], id, record)
return {id, record}
"""

# The ledger total must equal the sum of the per-worker rows (every post adds to both).
# Read (and, asked to, repaired) in one step, so a turn posted meanwhile cannot show up
# as a phantom difference.
RECONCILE_TOTAL = """
-- KEYS[1] ledger total hash, KEYS[2 ..] every worker's ledger row
-- ARGV[1] JSON list of the fields to compare, ARGV[2] '1' to repair the total, '0' not
-- Returns JSON {field: [total, sum of worker rows]} of the fields that differ(ed).
local fields = cjson.decode(ARGV[1])
local out = {}
for _, field in ipairs(fields) do
  local sum = 0
  for i = 2, #KEYS do sum = sum + tonumber(redis.call('HGET', KEYS[i], field) or '0') end
  local total = tonumber(redis.call('HGET', KEYS[1], field) or '0')
  if total ~= sum then
    out[field] = {string.format('%.0f', total), string.format('%.0f', sum)}
    if ARGV[2] == '1' then
      redis.call('HINCRBY', KEYS[1], field, string.format('%.0f', sum - total))
    end
  end
end
return cjson.encode(out)
"""
