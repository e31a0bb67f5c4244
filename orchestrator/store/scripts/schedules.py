"""The schedule Lua scripts (peek, claim, decide, record, state, update): registered once per
client by :class:`orchestrator.store.schedules.ScheduleStore`; each opens with a comment
naming its KEYS and ARGV, and touches no key it is not given in KEYS. See
``docs/schedules.md`` for the protocol they implement.
"""

from __future__ import annotations

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
# loses nothing: another beat takes the claim over and sends it. A beat that read the
# timing before an update (its 'rev' moved on) claims nothing; its next tick reads again.
SCHEDULE_CLAIM = """
-- KEYS[1] due zset, KEYS[2] pending zset, KEYS[3..] the hash of each schedule, in order
-- ARGV[1] now (ms), then 6 values per schedule: id, the next-run ms it was read with,
-- its new next-run ms ('' if none: the one-shot is done), slots missed, slots to fire
-- (comma-separated ms, may be ''), the rev its timing was read at ('': not checked)
-- Returns the pending members (id|slot) claimed.
local out = {}
local count = (#ARGV - 1) / 6
for i = 0, count - 1 do
  local base = 2 + i * 6
  local id, expected, new_next = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local missed, hash, rev = tonumber(ARGV[base + 3]), KEYS[3 + i], ARGV[base + 5]
  local score = redis.call('ZSCORE', KEYS[1], id)
  local current = rev == '' or (redis.call('HGET', hash, 'rev') or '0') == rev
  if current and score and tonumber(score) == tonumber(expected) then
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
# Which statuses are not terminal comes in ARGV from ``jobs.model``, not copied here.
SCHEDULE_DECIDE = """
-- KEYS[1] schedule hash, KEYS[2] runs hash (slot -> JSON), KEYS[3] run slots zset,
-- KEYS[4] buffered zset, KEYS[5] hash of the job named by last_job (any key if none)
-- ARGV[1] schedule id, ARGV[2] slot (ms), ARGV[3] now (ms), ARGV[4] last_job as read,
-- ARGV[5] runs kept in the history, ARGV[6] reservation timeout (ms),
-- ARGV[7..] the job statuses that are not terminal (a job in one is still going)
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
  for i = 7, #ARGV do
    if job == ARGV[i] then return true end
  end
  return false
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

# An update, all or nothing: the new fields, and for a new timing its next run in the
# due index. What was due under the old timing and not yet claimed is claimed here, as
# a beat would have (the caller sends it), so no slot is lost or run twice around it;
# a slot a beat claimed first stays claimed. The rev moves on, so a beat holding the
# old timing claims nothing with it.
SCHEDULE_UPDATE = """
-- KEYS[1] schedule hash, KEYS[2] due zset, KEYS[3] pending zset
-- ARGV[1] schedule id, ARGV[2] now (ms), ARGV[3] rev as read, ARGV[4] due score as
-- read ('' if not in the due index), ARGV[5] the new next run ms ('' if the timing
-- stays), ARGV[6] slots missed, ARGV[7] slots to claim (comma-separated ms, may be ''),
-- ARGV[8..] field, value, ... to set
-- Returns {'ok', claimed members...}, {'gone'} (unknown), {'over'} (done or
-- cancelled) or {'retry'} (claimed, paused, resumed or updated since read).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'gone'} end
if status ~= 'active' and status ~= 'paused' then return {'over'} end
if (redis.call('HGET', KEYS[1], 'rev') or '0') ~= ARGV[3] then return {'retry'} end
local id = ARGV[1]
local out = {'ok'}
if ARGV[5] ~= '' then
  local score, read = redis.call('ZSCORE', KEYS[2], id), ARGV[4]
  if (score and read == '') or (not score and read ~= '') then return {'retry'} end
  if score and tonumber(score) ~= tonumber(read) then return {'retry'} end
  if tonumber(ARGV[6]) > 0 then redis.call('HINCRBY', KEYS[1], 'missed', ARGV[6]) end
  for slot in string.gmatch(ARGV[7], '[^,]+') do
    local member = id .. '|' .. slot
    redis.call('ZADD', KEYS[3], ARGV[2], member)
    redis.call('HINCRBY', KEYS[1], 'claimed', 1)
    table.insert(out, member)
  end
  redis.call('HSET', KEYS[1], 'next_run_ms', ARGV[5])
  if status == 'active' then redis.call('ZADD', KEYS[2], ARGV[5], id) end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('HINCRBY', KEYS[1], 'rev', 1)
return out
"""
