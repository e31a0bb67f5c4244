"""Lua for a job's records: its status moves, its history, and their retention.

A job's history is a field of its own hash (``history``: one line an entry,
``<at ms> <status>`` and the detail as a JSON string when there is one, at most
``HISTORY_MAX`` lines), not a stream of its own: a stream's first node alone costs ~4 KB.
Each status move is published on the job's event channel, which is what
``Orchestrator.wait()`` blocks on. When a job reaches a terminal status, its records get
their expiry in the same script (or, with an archive configured, the job is queued for
the archiver, whose RETAIN sets it once the job is written; see docs/retention.md). A
job ended here (cancelled, expired, timed out) waits in the ended set instead, its
records kept until its upstream turn is settled; SETTLED then starts their retention.
"""

from __future__ import annotations

from orchestrator.jobs.model import STATUS_RANK, TERMINAL_RANK

#: The most entries a job's history keeps (the oldest go first).
HISTORY_MAX = 100
#: An updates stream this long or shorter is rewritten to its exact size when its turn
#: ends (DUMP/RESTORE drops the ~4 KB a stream node preallocates); a longer one is left
#: as is (its waste is small beside it, and rewriting it would stall Redis).
COMPACT_MAX_ENTRIES = 2000

# history_add(job hash, status, at ms, detail, most entries): one line appended, in the
# form of orchestrator.store.status.history_line: '<at> <status>[ <detail as JSON>]'.
HISTORY_FN = """
local function history_add(job, status, at, detail, most)
  local entry = at .. ' ' .. status
  if detail ~= '' then entry = entry .. ' ' .. cjson.encode(detail) end
  local text = redis.call('HGET', job, 'history')
  local n = tonumber(redis.call('HGET', job, 'history_n') or '0') + 1
  if text and text ~= '' then text = text .. '\\n' .. entry else text = entry end
  while n > most do
    local cut = string.find(text, '\\n', 1, true)
    if not cut then break end
    text = string.sub(text, cut + 1)
    n = n - 1
  end
  redis.call('HSET', job, 'history', text, 'history_n', n)
end
"""

# retain(first, nw, ttl ms, job id): KEYS[first .. first+nw-1] are the worker's records
# (its hash first, its updates stream second), KEYS[first+nw ..] the job's own. Expiry is
# only ever lengthened; the worker's records are touched only while this job is the
# worker's active one (a later turn's job sets them when it ends).
RETAIN_FN = f"""
local function retain(first, nw, ttl, job_id)
  local mine = true
  if nw > 0 then
    local active = redis.call('HGET', KEYS[first], 'active_job')
    mine = (not active) or active == job_id
    local updates = KEYS[first + 1]
    if mine and redis.call('EXISTS', updates) == 1
       and redis.call('XLEN', updates) <= {COMPACT_MAX_ENTRIES} then
      local left = redis.call('PTTL', updates)
      local dump = redis.call('DUMP', updates)
      redis.call('RESTORE', updates, left > 0 and left or 0, dump, 'REPLACE')
    end
  end
  for i = first, #KEYS do
    if i >= first + nw or mine then
      local left = redis.call('PTTL', KEYS[i])
      if left == -1 or (left >= 0 and left < ttl) then redis.call('PEXPIRE', KEYS[i], ttl) end
    end
  end
end
"""

# lost(job, worker, updates, row, retention, job id, worker id, ttl ms, now): the job has
# no record (Redis lost it, or it expired) and a late write reached its worker: the
# worker's hash, updates stream and ledger row, if they have no expiry, get the
# retention a finished job's would, and the retention zset is told (its prune pass
# drops the worker from the ledger's index once the row is gone). Only while this job is
# the worker's active one, or it names none: a live job of the worker keeps them. A
# partial job hash (fields an older late write made) expires too.
LOST_FN = """
local function lost_expire(lost_key, ttl)
  if redis.call('PTTL', lost_key) ~= -1 then return false end
  redis.call('PEXPIRE', lost_key, ttl)
  return true
end
local function lost(lost_job, lost_worker, lost_updates, lost_row, lost_retention,
                    job_id, worker_id, ttl, now)
  lost_expire(lost_job, ttl)
  if worker_id == '' then return end
  local active = redis.call('HGET', lost_worker, 'active_job')
  if active and active ~= job_id then return end
  local a = lost_expire(lost_worker, ttl)
  local b = lost_expire(lost_updates, ttl)
  local c = lost_expire(lost_row, ttl)
  if a or b or c then
    redis.call('ZADD', lost_retention, tonumber(now) + ttl, job_id .. '|' .. worker_id)
  end
end
"""

# Finalize found no record of a job (lost with Redis's last writes, or expired): its
# follow entry goes (else a follower claims it at every lease, for ever) and what a
# late write left of it and of its worker expires (see lost).
FORGET_LOST = (
    """
-- KEYS[1] job hash, KEYS[2] follows zset, KEYS[3] follow owners hash, KEYS[4] worker
-- hash, KEYS[5] updates stream, KEYS[6] worker's ledger row, KEYS[7] retention zset
-- (KEYS[4..6] of the worker named by the job's partial hash or the caller; any name
-- when none: ARGV[2] is then '')
-- ARGV[1] job id, ARGV[2] worker id ('' unknown), ARGV[3] retention (ms), ARGV[4] now (ms)
-- Returns 1 once done, 0 if the job has a record (nothing written).
"""
    + LOST_FN
    + """if redis.call('HGET', KEYS[1], 'id') then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
lost(KEYS[1], KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4])
return 1
"""
)

# A field of a worker's hash (its snapshot, its stopped job), written only while the
# hash exists: its records expired, or were lost with the job that made them, and a
# hash made anew by this write alone would never expire.
WORKER_FIELD = """
-- KEYS[1] worker hash
-- ARGV[1] field, ARGV[2] value
-- Returns 1 once written, 0 if the worker has no records (nothing written).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# A fetched file's entry: written only while the job has a record (a late fetch of a
# job Redis lost, or that expired, would make a files hash nothing expires), and with
# the job's expiry when the job ended before the hash existed (its end set the expiry
# of the records there were then).
RECORD_FILE = """
-- KEYS[1] job hash, KEYS[2] the job's files hash
-- ARGV[1] file name, ARGV[2] its entry (JSON)
-- Returns 1 once recorded, 0 if the job has no record (nothing written).
if not redis.call('HGET', KEYS[1], 'id') then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local left = redis.call('PTTL', KEYS[1])
if left > 0 and redis.call('PTTL', KEYS[2]) == -1 then redis.call('PEXPIRE', KEYS[2], left) end
return 1
"""

# Status order: a job only ever moves forward; terminal states never change again. The
# rank table and the terminal rank are written in from jobs.model, the rule's one home.
# An end leaves the live index; an end reached here (cancelled, expired, timed out:
# ARGV[10]) enters the ended set instead of starting its retention, which SETTLED starts
# once its upstream turn is settled (its records must outlive the turn they pay for).
_RANKS = ", ".join(f"{status}={rank}" for status, rank in STATUS_RANK.items())
TRANSITION = (
    """
-- KEYS[1] job hash, KEYS[2] states count hash, KEYS[3] retention zset, KEYS[4] archive
-- queue zset, KEYS[5] live jobs zset, KEYS[6] ended jobs zset, KEYS[7 ..] the records
-- that expire with the job (see retain)
-- ARGV[1] new status, ARGV[2] now (ms), ARGV[3] detail ('' for none), ARGV[4] history
-- max, ARGV[5] retention (ms), ARGV[6] the job's worker id as the caller read it ('' none),
-- ARGV[7] how many of the records are the worker's, ARGV[8] the job's event channel,
-- ARGV[9] '1' to queue the job for the archiver instead of setting its expiry,
-- ARGV[10] '1' if the job ends here (into the ended set, its retention not yet begun)
-- Returns 1 if the status changed, 0 if it already was that, -1 if refused
-- (backwards/terminal), -2 if the job's worker is not ARGV[6] (read again, call again).
"""
    + f"local rank = {{{_RANKS}}}\nlocal terminal = {TERMINAL_RANK}\n"
    + HISTORY_FN
    + RETAIN_FN
    + """local current = redis.call('HGET', KEYS[1], 'status')
if not current then return -1 end
local new = ARGV[1]
if current == new then return 0 end
if rank[current] >= terminal or rank[new] < rank[current] then return -1 end
local ends = rank[new] >= terminal
local here = ARGV[10] == '1'
local worker = redis.call('HGET', KEYS[1], 'worker_id') or ''
if ends and not here and worker ~= ARGV[6] then return -2 end
redis.call('HSET', KEYS[1], 'status', new, 'at_' .. new, ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
history_add(KEYS[1], new, ARGV[2], ARGV[3], tonumber(ARGV[4]))
redis.call('HINCRBY', KEYS[2], current, -1)
redis.call('HINCRBY', KEYS[2], new, 1)
if ends then
  local id = redis.call('HGET', KEYS[1], 'id')
  redis.call('ZREM', KEYS[5], id)
  if here then
    redis.call('ZADD', KEYS[6], ARGV[2], id)
  elseif ARGV[9] == '1' then
    redis.call('ZADD', KEYS[4], ARGV[2], id)
  else
    local ttl = tonumber(ARGV[5])
    retain(7, tonumber(ARGV[7]), ttl, id)
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + ttl, id .. '|' .. worker)
  end
end
redis.call('PUBLISH', ARGV[8], new)
return 1
"""
)

# A job ended here is settled (its upstream turn posted, or found to have none): it
# leaves the ended set and its retention starts now, as TRANSITION starts a finished
# job's (or it is queued for the archiver, which starts it once the job is written).
SETTLED = (
    """
-- KEYS[1] job hash, KEYS[2] retention zset, KEYS[3] archive queue zset, KEYS[4] ended
-- jobs zset, KEYS[5 ..] the records that expire with the job (see retain)
-- ARGV[1] job id, ARGV[2] now (ms), ARGV[3] retention (ms), ARGV[4] how many of the
-- records are the worker's, ARGV[5] the job's worker id as the caller read it,
-- ARGV[6] '1' to queue the job for the archiver instead of setting its expiry
-- Returns 1 once done, 0 if the job was not in the ended set (or is gone), -2 if the
-- job's worker is not ARGV[5] (read again, call again).
"""
    + RETAIN_FN
    + """if redis.call('ZSCORE', KEYS[4], ARGV[1]) == false then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 0
end
if (redis.call('HGET', KEYS[1], 'worker_id') or '') ~= ARGV[5] then return -2 end
redis.call('ZREM', KEYS[4], ARGV[1])
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
else
  local ttl = tonumber(ARGV[3])
  retain(5, tonumber(ARGV[4]), ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + ttl, ARGV[1] .. '|' .. ARGV[5])
end
return 1
"""
)

# The archiver wrote a finished job: now its records get their expiry, counted from the
# job's end, never less than a second from now.
RETAIN = (
    """
-- KEYS[1] job hash, KEYS[2] retention zset, KEYS[3] archive queue zset, KEYS[4 ..] the
-- records that expire with the job (see retain)
-- ARGV[1] job id, ARGV[2] expiry (epoch ms), ARGV[3] now (ms), ARGV[4] how many of the
-- records are the worker's, ARGV[5] the job's worker id as the caller read it
-- Returns 1 once set, 0 if the job is no longer queued for the archive, -2 if the job's
-- worker is not ARGV[5] (read again, call again).
"""
    + RETAIN_FN
    + """if redis.call('ZSCORE', KEYS[3], ARGV[1]) == false then return 0 end
if (redis.call('HGET', KEYS[1], 'worker_id') or '') ~= ARGV[5] then return -2 end
local ttl = math.max(tonumber(ARGV[2]) - tonumber(ARGV[3]), 1000)
retain(4, tonumber(ARGV[4]), ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + ttl, ARGV[1] .. '|' .. ARGV[5])
return 1
"""
)

# A completed turn's updates leave the stream for one compressed field of the worker
# hash (orchestrator/store/compact.py), checked first against what the stream holds, so
# no update is lost, and written once, so a second call (a redelivered finalize) changes
# nothing. Its entries go from the stream: all ids below the turn's end when nothing of an
# earlier turn is left there (XTRIM: whole nodes freed), else each one (XDEL); an emptied
# stream is deleted, and the worker's next turn starts a new one at its own index.
FOLD_TURN = """
-- KEYS[1] worker hash, KEYS[2] updates stream
-- ARGV[1] the turn's first index (names the field), ARGV[2] the blob's first index,
-- ARGV[3] the turn's end (exclusive), ARGV[4] the blob, ARGV[5] other folded turns that
-- began before this index are dropped (the stream's cap, UPDATES_MAXLEN)
-- Returns 1 once folded, 0 if folded already (or the worker is gone), -1 if the stream
-- does not hold the blob's updates (nothing written).
local field = 'turn:' .. ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], field) == 1 then
  return 0
end
local first, stop = tonumber(ARGV[2]), tonumber(ARGV[3])
local entries = redis.call('XRANGE', KEYS[2], '0-' .. (first + 1), '0-' .. stop)
if #entries ~= stop - first then return -1 end
redis.call('HSET', KEYS[1], field, ARGV[4])
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1][1]
if tonumber(string.sub(head, 3)) >= first + 1 then
  redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. (stop + 1))
else
  for _, entry in ipairs(entries) do redis.call('XDEL', KEYS[2], entry[1]) end
end
if redis.call('XLEN', KEYS[2]) == 0 then redis.call('DEL', KEYS[2]) end
local oldest = tonumber(ARGV[5])
if oldest > 0 then
  for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
    local start = string.match(name, '^turn:(%d+)$')
    if start and tonumber(start) < oldest and name ~= field then
      redis.call('HDEL', KEYS[1], name)
    end
  end
end
return 1
"""

# Trim one listing index (per tag, per schedule) of expired jobs' ids; an index left
# empty is forgotten in the same step, so a job created meanwhile (which writes the
# index and its name together) is never left in an index nobody trims.
# NOTE: a history entry that changes nothing (the job's status as it is, a detail).
# KEYS[1] job hash. ARGV[1] now (ms), ARGV[2] detail, ARGV[3] most entries.
# Returns 1, or 0 for a job that is gone (expired: nothing is written).
NOTE = (
    HISTORY_FN
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
history_add(KEYS[1], status, ARGV[1], ARGV[2], tonumber(ARGV[3]))
return 1
"""
)

TRIM_INDEX = """
-- KEYS[1] set of the listing indexes' names, KEYS[2] the index zset
-- ARGV[1..] ids of jobs whose records are gone
-- Returns how many ids were removed.
local removed = 0
if #ARGV > 0 then removed = redis.call('ZREM', KEYS[2], unpack(ARGV)) end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SREM', KEYS[1], KEYS[2]) end
return removed
"""
