"""Several of our scripts run as one: the end of a turn in a single round trip.

A turn's post (POST_TURN) and its completion (the fold, the move to ``completed``, the
follow lease, the slots) must not run without each other: the completion only once the
post is in (or was made before). Sent in one pipeline as separate scripts, a refused
post (an error reply: nothing written) would be followed by the completion all the
same; so they run as parts of one script, CHAIN, which stops at the first part that
answers an error. Each part is the text of its own script, wrapped in a Lua function
of (KEYS, ARGV), so its rules keep one home.
"""

from __future__ import annotations

import hashlib

from orchestrator.store.scripts.jobs import APPEND_UPDATES, POST_TURN, RELEASE_FOLLOW, SUBMIT
from orchestrator.store.scripts.records import FOLD_TURN, TRANSITION
from orchestrator.store.scripts.spend import PROMOTE_WAITING

# A field of a job's record, as a part (a turn's 'update_to' is written only with its
# end) or alone; written only while the job has a record (a late write must not make
# a partial job hash, which nothing expires).
SET_FIELD = """
-- KEYS[1] a job hash
-- ARGV[1] field, ARGV[2] value
-- Returns 1 once written, 0 if the job has no record (nothing written).
if not redis.call('HGET', KEYS[1], 'id') then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

#: The scripts CHAIN can run, in the order of their part numbers (1, 2, ...).
PARTS = (
    POST_TURN, SET_FIELD, FOLD_TURN, TRANSITION, RELEASE_FOLLOW, PROMOTE_WAITING, SUBMIT,
    APPEND_UPDATES,
)  # fmt: skip
#: The error reply of a call whose guard stopped the chain: ``REFUSED <call> <reply>``.
REFUSED = "REFUSED"


def sha(text: str) -> str:
    """The SHA1 a script is known by in Redis (as redis-py's ``Script.sha``)."""
    return hashlib.sha1(text.encode()).hexdigest()


#: Part number by the SHA of the part's own script.
PART_NUMBER = {sha(text): i + 1 for i, text in enumerate(PARTS)}
SET_FIELD_SHA = sha(SET_FIELD)

_FUNCTIONS = "".join(
    f"local function part{i + 1}(KEYS, ARGV)\n{text}\nend\n" for i, text in enumerate(PARTS)
)
_NAMES = ", ".join(f"part{i + 1}" for i in range(len(PARTS)))

CHAIN = (
    """
-- KEYS: each call's keys, one call after the other
-- ARGV[1] n calls; ARGV[2 .. 1+4n] for call i: its part number, key count, arg count,
-- guard ('' none: else the least number it may answer); then each call's args, one
-- call after the other
-- Runs the calls in order and returns their replies (a nil one as false); the first
-- error reply stops it and is the reply (the calls after it do not run), as does a
-- number below its call's guard: 'REFUSED <call, from 1> <number>' (a refusal that
-- is no error alone, such as TRANSITION's -1, made to stop what depends on it).
"""
    + _FUNCTIONS
    + f"local parts = {{{_NAMES}}}\n"
    + """local n = tonumber(ARGV[1])
local k, a = 1, 2 + 4 * n
local out = {}
for c = 1, n do
  local part = parts[tonumber(ARGV[4 * c - 2])]
  local nk, na = tonumber(ARGV[4 * c - 1]), tonumber(ARGV[4 * c])
  local least = ARGV[4 * c + 1]
  local keys, args = {}, {}
  for i = 1, nk do keys[i] = KEYS[k + i - 1] end
  for i = 1, na do args[i] = ARGV[a + i - 1] end
  k, a = k + nk, a + na
  local reply = part(keys, args)
  if type(reply) == 'table' and reply.err then return reply end
  if least ~= '' and type(reply) == 'number' and reply < tonumber(least) then
    return redis.error_reply('REFUSED ' .. c .. ' ' .. reply)
  end
  if reply == nil then reply = false end
  out[c] = reply
end
return out
"""
)
