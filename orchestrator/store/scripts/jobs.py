"""The Lua scripts that make multi-key writes atomic. Each is registered once per
client (EVALSHA, with a transparent re-load when Redis has forgotten it after a restart
or failover) and opens with a comment naming its KEYS and ARGV.
"""

from __future__ import annotations

from orchestrator.ledger import FIELDS, MAX_FIGURE, ROW_CEILING
from orchestrator.store.scripts.records import HISTORY_FN, HISTORY_MAX, LOST_FN

# A new job in one step: the idempotency key (when given) is checked and set in the
# same script, so of two racing submissions with one key exactly one writes a job. The
# listing indexes (per tag, per schedule) are written here too, so a listed job is
# always one that was created; their names go to a set the prune pass trims them from.
# A job the gateway stores also wakes the relay that sends its first task (the same
# call: one round trip per submit).
CREATE_JOB = """
-- KEYS[1] job hash, KEYS[2] jobs zset, KEYS[3] outbox zset, KEYS[4] states count hash,
-- KEYS[5] live jobs zset, KEYS[6] set of the listing indexes' names, KEYS[7] relay wake list,
-- KEYS[8..7+n] listing index zsets (per tag, per schedule), KEYS[8+n] idempotency key
-- (optional)
-- ARGV[1] job id, ARGV[2] now (ms), ARGV[3] when its first limit falls due (ms), ARGV[4] n,
-- ARGV[5] the wake list's cap (0: no wake; the caller sends the task itself),
-- ARGV[6..] the job hash (flat field, value, ...; its history's first entry included)
-- Returns {1, job id} when written, or {0, the id the idempotency key already names}.
local n = tonumber(ARGV[4])
local idem = KEYS[8 + n]
if idem then
  local existing = redis.call('GET', idem)
  if existing then return {0, existing} end
  redis.call('SET', idem, ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
for i = 8, 7 + n do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1])
  redis.call('SADD', KEYS[6], KEYS[i])
end
redis.call('HINCRBY', KEYS[4], 'queued', 1)
local cap = tonumber(ARGV[5])
if cap > 0 then
  -- Past the cap the oldest wakes go: their jobs stay in the outbox for the sweep.
  if redis.call('LPUSH', KEYS[7], ARGV[1]) > cap then
    redis.call('LTRIM', KEYS[7], 0, cap - 1)
  end
end
return {1, ARGV[1]}
"""

# The create step's first read. With no limit and no budget cap configured (nothing to
# admit against) a queued job's attempt is counted in the same step, so the step reaches
# the API after one round trip; otherwise the caller admits it first, then counts.
BEGIN_ATTEMPT = """
-- KEYS[1] job hash, KEYS[2] limits hash, KEYS[3] budget caps hash, KEYS[4] dispatched zset,
-- KEYS[5] begun zset
-- ARGV[1] job id, ARGV[2] now (ms)
-- Returns {1 if the attempt was counted else 0, job hash (flat field, value, ...)}.
redis.call('ZREM', KEYS[4], ARGV[1])
local job = redis.call('HGETALL', KEYS[1])
if #job == 0 then return {0, job} end
local counted = 0
if redis.call('HGET', KEYS[1], 'status') == 'queued'
   and redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
  counted = 1
  for i = 1, #job, 2 do
    if job[i] == 'attempts' then job[i + 1] = tostring(tonumber(job[i + 1]) + 1) end
  end
end
return {counted, job}
"""

# The create step's writes around its upstream call, each only while the job has a
# record: a step that returns after Redis lost the job (a host crash) would otherwise
# make a partial job hash, and a worker hash and follow entry, that nothing expires.
COUNT_ATTEMPT = """
-- KEYS[1] job hash, KEYS[2] begun zset
-- ARGV[1] job id, ARGV[2] now (ms)
-- Returns the attempts counted so far, or 0 if the job has no record (nothing written).
if not redis.call('HGET', KEYS[1], 'id') then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
"""

# The worker is linked and its records live again until this job ends; the job is put
# up for following (the move to 'submitted' is TRANSITION's, next in the same batch).
SUBMIT = """
-- KEYS[1] job hash, KEYS[2] begun zset, KEYS[3] worker hash, KEYS[4] updates stream,
-- KEYS[5] worker's ledger row, KEYS[6] follows zset, KEYS[7] live jobs zset
-- ARGV[1] job id, ARGV[2] worker id, ARGV[3] update_from, ARGV[4] snapshot (packed),
-- ARGV[5] follow from (ms; 0: at once, and the followers are woken), ARGV[6] the wake
-- channel, ARGV[7] when the job's next limit falls due (ms), ARGV[8 ..] 'counted:*'
-- fields to seed where absent (flat field, value, ...)
-- Returns 1 once written, 0 if the job has no record (nothing written).
redis.call('ZREM', KEYS[2], ARGV[1])
if not redis.call('HGET', KEYS[1], 'id') then return 0 end
redis.call('HSET', KEYS[1], 'worker_id', ARGV[2], 'update_from', ARGV[3])
for i = 8, #ARGV, 2 do redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[3], 'snapshot', ARGV[4], 'active_job', ARGV[1])
for i = 3, 5 do redis.call('PERSIST', KEYS[i]) end
redis.call('ZADD', KEYS[6], 'NX', ARGV[5], ARGV[1])
if tonumber(ARGV[5]) == 0 then redis.call('PUBLISH', ARGV[6], ARGV[1]) end
-- XX: a job that ended meanwhile has left the live index, and stays out of it.
redis.call('ZADD', KEYS[7], 'XX', ARGV[7], ARGV[1])
return 1
"""

# The SSE index is the dedupe key: update n is stream entry 0-(n+1), and the worker
# hash's 'relayed' counter says how many are stored, so a replay adds nothing.
APPEND_UPDATES = (
    """
-- KEYS[1] worker hash, KEYS[2] updates stream; with a job: KEYS[3] its job hash,
-- KEYS[4] the worker's ledger row, KEYS[5] retention zset
-- ARGV[1] index of the first payload, ARGV[2] stream maxlen, ARGV[3] now (ms),
-- ARGV[4] the job whose turn this is ('' none given), ARGV[5] the worker id, ARGV[6]
-- retention (ms), ARGV[7..] payloads (JSON)
-- Returns the number of updates stored after the call; raises on a gap, refuses (GONE)
-- a worker with no records (expired, or never submitted: a follower left over from a
-- job Redis lost) or a job with no record (its worker's records then expire: see
-- lost), and refuses (STOPPED) while 'stopped_job' names the worker's 'active_job'
-- (its job ended here: nothing more of that turn is relayed).
-- 'relayed_at' on the worker is when an update was last stored (a job's idle timeout
-- counts from it). A stream made anew takes the worker hash's expiry, if it has one.
"""
    + LOST_FN
    + """if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('GONE the worker has no records (expired or never submitted)')
end
if #KEYS > 2 and not redis.call('HGET', KEYS[3], 'id') then
  lost(KEYS[3], KEYS[1], KEYS[2], KEYS[4], KEYS[5], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[3])
  return redis.error_reply('GONE the job has no record (lost or expired)')
end
local state = redis.call('HMGET', KEYS[1], 'relayed', 'stopped_job', 'active_job')
if state[2] and state[2] == state[3] then
  return redis.error_reply('STOPPED the job of this turn has ended: not relayed')
end
local relayed = tonumber(state[1] or '0')
local before = relayed
local first = tonumber(ARGV[1])
for i = 7, #ARGV do
  local index = first + i - 7
  if index > relayed then
    return redis.error_reply('GAP expected update ' .. relayed .. ' got ' .. index)
  end
  if index == relayed then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '0-' .. (index + 1), 'data', ARGV[i])
    relayed = relayed + 1
  end
end
redis.call('HSET', KEYS[1], 'relayed', relayed)
if relayed > before then
  redis.call('HSET', KEYS[1], 'relayed_at', ARGV[3])
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 and redis.call('PTTL', KEYS[2]) == -1 then redis.call('PEXPIRE', KEYS[2], left) end
end
return relayed
"""
)

# A sweep's claim on the entries of a zset scored by due time: each claimed entry moves
# to a later score, so a second sweeper passes it by unless the first one died.
CLAIM_DUE = """
-- KEYS[1] zset scored by due time (ms)
-- ARGV[1] now (ms), ARGV[2] the score claimed entries move to (ms), ARGV[3] most to claim
-- Returns the claimed members (those due by ARGV[1]).
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member) end
return due
"""

# One turn's cost is the difference of cumulative snapshots; posting it is keyed by
# the turn id so a replay is a no-op, and 'counted:*' on the worker only moves forward.
# What a turn posted is its job hash's 'ledger' field (the deltas in FIELDS order, comma
# separated: a few dozen bytes where a key of named JSON cost ~420), so it expires with
# the job. The string key is the older layout's: a deployment upgraded in place has
# them, so its presence still means "posted"; it is written only for a job with no
# record (lost with Redis's last writes, or expired: nothing else to keep the record
# in), with the job's retention as its expiry.
# All or nothing: every figure is checked, and every row it adds to, before the first
# write (Redis does not roll a script back). Figures arrive as decimal strings of at most
# MAX_FIGURE (< 2**53, exact as Lua doubles); replies carry integers as strings (cjson
# would print large numbers in exponent form). A figure below what was counted is an
# anomaly: nothing is posted for it, 'counted' keeps the high mark, the fall is kept as
# 'fell:<field>' on the worker (cleared when the figure climbs back) and noted in the
# job's history.
_FIELD_LIST = ", ".join(f"'{name}'" for name in FIELDS)
POST_TURN = (
    """
-- KEYS[1] worker hash, KEYS[2] the turn's ledger record of the older layout (string),
-- KEYS[3] ledger total hash, KEYS[4 .. 3+n] rollup hashes, KEYS[4+n .. 3+2n] index sets
-- (one per rollup), KEYS[4+2n] job hash (its 'ledger' and 'cost_known' are set, its
-- history noted), KEYS[5+2n] the worker's updates stream, KEYS[6+2n] its ledger row,
-- KEYS[7+2n] retention zset (these three for a job with no record: see lost)
-- ARGV[1] turn id, ARGV[2] n, ARGV[3] JSON {field: cumulative as a decimal string},
-- ARGV[4 .. 3+n] the index member of each rollup, ARGV[4+n] now (ms), ARGV[5+n] the
-- job's retention (ms), ARGV[6+n] the worker id
-- Returns {JSON of the posted deltas, JSON of the falls}, false if this turn was already
-- posted, or an error reply (nothing written) for a bad figure or a row that would overflow.
"""
    + f"local fields = {{{_FIELD_LIST}}}\nlocal max_figure = {MAX_FIGURE}\n"
    + f"local row_ceiling = {ROW_CEILING}\n"
    + HISTORY_FN
    + LOST_FN
    + """local n = tonumber(ARGV[2])
local job = KEYS[4 + 2 * n]
local job_known = redis.call('HGET', job, 'id') ~= false
if redis.call('EXISTS', KEYS[2]) == 1
   or (job_known and redis.call('HEXISTS', job, 'ledger') == 1) then return false end
local ok, cumulative = pcall(cjson.decode, ARGV[3])
if not ok or type(cumulative) ~= 'table' then
  return redis.error_reply('BADFIGURE the figures are not a JSON object')
end
local values, deltas, falls = {}, {}, {}
local fell = false
for _, field in ipairs(fields) do
  local text = cumulative[field]
  if type(text) ~= 'string' or #text > 16 or not string.match(text, '^%d+$')
     or tonumber(text) > max_figure then
    return redis.error_reply('BADFIGURE ' .. field .. ' is not an integer from 0 to ' .. max_figure)
  end
  local value = tonumber(text)
  local counted = tonumber(redis.call('HGET', KEYS[1], 'counted:' .. field) or '0')
  values[field] = value
  if value < counted then
    falls[field] = string.format('%.0f', counted - value)
    deltas[field] = 0
    fell = true
  else
    deltas[field] = value - counted
  end
end
for i = 0, n do
  local row = redis.call('HMGET', KEYS[3 + i], unpack(fields))
  for j, field in ipairs(fields) do
    if tonumber(row[j] or '0') + deltas[field] > row_ceiling then
      return redis.error_reply('ROWFULL ' .. KEYS[3 + i] .. ' ' .. field .. ' would overflow')
    end
  end
end
local posted = {}
for _, field in ipairs(fields) do
  local text = string.format('%.0f', deltas[field])
  posted[field] = text
  if falls[field] then
    redis.call('HSET', KEYS[1], 'fell:' .. field, falls[field])
  else
    redis.call('HSET', KEYS[1], 'counted:' .. field, string.format('%.0f', values[field]))
    redis.call('HDEL', KEYS[1], 'fell:' .. field)
  end
  redis.call('HINCRBY', KEYS[3], field, text)
  for i = 1, n do redis.call('HINCRBY', KEYS[3 + i], field, text) end
end
redis.call('HINCRBY', KEYS[3], 'turns', 1)
for i = 1, n do
  redis.call('HINCRBY', KEYS[3 + i], 'turns', 1)
  redis.call('SADD', KEYS[3 + n + i], ARGV[3 + i])
end
local record = cjson.encode(posted)
if job_known then
  local packed = {}
  for i, field in ipairs(fields) do packed[i] = posted[field] end
  redis.call('HSET', job, 'ledger', table.concat(packed, ','), 'cost_known', '1')
else
  -- The money is posted all the same (the upstream bills the turn); what records it
  -- here expires as the job's records would have.
  local ttl = tonumber(ARGV[5 + n])
  redis.call('SET', KEYS[2], record, 'PX', ttl)
  lost(job, KEYS[1], KEYS[5 + 2 * n], KEYS[6 + 2 * n], KEYS[7 + 2 * n], ARGV[1], ARGV[6 + n],
       ttl, ARGV[4 + n])
end
local fallen = '{}'
if fell then
  fallen = cjson.encode(falls)
  local parts = {}
  for _, field in ipairs(fields) do
    if falls[field] then table.insert(parts, field .. ' fell by ' .. falls[field]) end
  end
  local status = redis.call('HGET', job, 'status') or ''
  if job_known then history_add(job, status, ARGV[4 + n],
             'cost anomaly: upstream cumulative figure below what was counted '
             .. '(nothing posted for it): ' .. table.concat(parts, ', '), """
    + str(HISTORY_MAX)
    + """) end
end
return {record, fallen}
"""
)

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

# --- reconcile (see orchestrator/ops/reconcile.py) -----------------------------------------

# The upstream is the source of truth for money. What reached the ledger for a worker is
# the larger of its own ledger row and its 'counted:*' (both are written by POST_TURN in
# one step, and damage only ever loses data); the rest of the worker's cumulative figure
# is posted as a correction to the total and every rollup of its latest job, the worker
# row alone is brought to the upstream figure, and 'counted:*' moves to it. Atomic, so it
# is safe beside a finalize posting the same worker: whichever runs second adds nothing.
RECONCILE_WORKER = """
-- KEYS[1] worker hash, KEYS[2] ledger corrections hash, KEYS[3] ledger total hash,
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

# The ledger total must equal the sum of the day rows (every post adds to both; days are
# kept, where worker rows expire with their worker's records).
# Read (and, asked to, repaired) in one step, so a turn posted meanwhile cannot show up
# as a phantom difference.
RECONCILE_TOTAL = """
-- KEYS[1] ledger total hash, KEYS[2 ..] every day's ledger row
-- ARGV[1] JSON list of the fields to compare, ARGV[2] '1' to repair the total, '0' not
-- Returns JSON {field: [total, sum of day rows]} of the fields that differ(ed).
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
