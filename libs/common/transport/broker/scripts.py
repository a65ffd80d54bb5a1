"""The Lua scripts that make each broker step atomic, and the Redis keys they use.

Each script runs inside Redis as one step: a message is never between two places. A worker
takes a message and records it as in flight in one call (`FETCH`), so a Redis restart or a
killed worker cannot drop it between a pop and a bookkeeping write (kombu's BRPOP then
HSET can).

Keys (all under `jobs.`, apart from kombu's own queue lists):
- `jobs.inflight:<owner>`  hash, delivery tag -> "<queue list key>\\n<raw message>"
- `jobs.owners`            zset, owner -> last heartbeat (Redis server time, ms)
- `jobs.tick`              the last time any owner ticked (ms): a gap means Redis or every
                           worker was down, and nobody is judged dead on that gap
- `jobs.delayed`           zset, "<queue list key>\\n<raw message>" -> due time (ms)
- `jobs.bell:<queue>`      list of at most one token: "this queue has work", what idle
                           consumers block on instead of blocking on the queue itself
- `jobs.consumers`         hash, owner -> the queues it consumes, comma-separated: who is
                           listening, for the operations page and the no-consumer alert
- `jobs.redelivered`       hash, a message's key -> how many times it went back on its queue
                           (a requeue, a dead owner's recovery, an unstarted prefetch given
                           back); the key is its own delivery tag (the SHA-1 of the raw item
                           when it has none). Written by the step that puts it back, read by
                           FETCH, removed when the message is settled; the whole hash expires
                           REDELIVERED_TTL_MS after its last write, a bound on what a settle
                           that could not clean up (an older worker, a purge) leaves behind
- `jobs.quarantine`        list of "<why>\\n<queue>\\n<raw item>": entries of the delayed set or
                           of a dead owner's in-flight hash that could not go back on a queue
                           (no queue named, or a key that is not a list); the heartbeat moves
                           them aside here in the same step, and a live owner moves them on into
                           the dead-letter store (`Owner.drain_quarantine`)
- `jobs.paused`            hash, queue -> JSON {since, by, reason}: queues an operator paused
                           (`pause.py`); FETCH takes nothing from them, on any worker
"""

from __future__ import annotations

INFLIGHT_PREFIX = "jobs.inflight:"
OWNERS = "jobs.owners"
TICK = "jobs.tick"
DELAYED = "jobs.delayed"
BELL_PREFIX = "jobs.bell:"
SEQUENCE = "jobs.seq"
CONSUMERS = "jobs.consumers"
REDELIVERED = "jobs.redelivered"
QUARANTINE = "jobs.quarantine"
PAUSED = "jobs.paused"
# A message's redelivery count is forgotten this long after the last requeue anywhere.
REDELIVERED_TTL_MS = 7 * 24 * 3600 * 1000

# Shared Lua helpers: split an entry, ring a queue's bell, put an entry back at the
# consuming end of its list (it runs next: it had already waited its turn), count a
# message's returns to its queue, and set aside an entry that cannot go back on a queue.
# Nothing in an entry may make a step fail: a failing step would fail every heartbeat and
# stop every countdown on the platform, so each write an entry decides is a pcall.
_HELPERS = (
    """
local REDELIVERED = '"""
    + REDELIVERED
    + """'
local QUARANTINE = '"""
    + QUARANTINE
    + """'
local PAUSED = '"""
    + PAUSED
    + """'
local REDELIVERED_TTL_MS = """
    + str(REDELIVERED_TTL_MS)
    + """
local function failed(r) return type(r) == 'table' and r.err ~= nil end
local function bell_for(list, sep, prefix)
  local p = string.find(list, sep, 1, true)
  if p then list = string.sub(list, 1, p - 1) end
  return prefix .. list
end
local function ring(list, sep, prefix)
  local bell = bell_for(list, sep, prefix)
  local n = redis.pcall('LLEN', bell)
  if n == 0 then redis.pcall('LPUSH', bell, '1') end
end
local function split(entry)
  local nl = string.find(entry, '\\n', 1, true)
  if not nl then return nil, entry end
  return string.sub(entry, 1, nl - 1), string.sub(entry, nl + 1)
end
-- The key a message's redelivery count is kept under: its delivery tag, stable across
-- deliveries because the raw item is never rewritten; the item's SHA-1 when it has none.
local function tag_of(item)
  -- A message far over any payload limit is refused undecoded by the worker: decoding it here
  -- (a 98 MB item held Redis for about 2 s) would only block every other client. It gets a
  -- fresh tag, and its count goes under its SHA-1.
  if #item > 4194304 then return nil end
  local ok, msg = pcall(cjson.decode, item)
  if ok and type(msg) == 'table' and type(msg['properties']) == 'table' then
    local tag = msg['properties']['delivery_tag']
    if type(tag) == 'string' and tag ~= '' then return tag end
  end
  return nil
end
local function count_return(item)
  local key = tag_of(item) or redis.sha1hex(item)
  if not failed(redis.pcall('HINCRBY', REDELIVERED, key, 1)) then
    redis.call('PEXPIRE', REDELIVERED, REDELIVERED_TTL_MS)
  end
end
-- Put an entry's message back at the consuming end of its list. Returns 'pushed', or
-- 'quarantined' when the entry cannot go on a queue (it is then in QUARANTINE, with why),
-- or nil when it could go nowhere (QUARANTINE itself is not a list): leave it where it is.
local function place(entry, sep, prefix, what)
  local list, item = split(entry)
  local why
  if list == nil or list == '' then
    why = 'names no queue'
  elseif string.sub(list, 1, 5) == 'jobs.' then
    why = 'names ' .. string.sub(list, 1, 200) .. ', a broker key, not a queue'
  else
    local r = redis.pcall('RPUSH', list, item)
    if not failed(r) then
      ring(list, sep, prefix)
      return 'pushed'
    end
    why = 'names ' .. string.sub(list, 1, 200) .. ', which is not a queue (' .. tostring(r.err) .. ')'
  end
  local queue = ''
  if list then queue = bell_for(list, sep, '') end
  why = string.gsub(what .. ' ' .. why, '\\n', ' ')
  if failed(redis.pcall('RPUSH', QUARANTINE, why .. '\\n' .. queue .. '\\n' .. item)) then return nil end
  return 'quarantined'
end
-- Give a held message back to its queue and count the return. Returns as `place`.
local function give_back(hash, tag, entry, sep, prefix)
  local placed = place(entry, sep, prefix, 'in-flight entry')
  if placed == 'pushed' then
    local _, item = split(entry)
    count_return(item)
  end
  if placed then redis.call('HDEL', hash, tag) end
  return placed
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""
)

# KEYS[1]: the owner's in-flight hash; KEYS[2..]: queue lists, highest priority first.
# ARGV[1]: kombu's priority separator; ARGV[2]: bell prefix; ARGV[3]: at most this many
# messages (the consumer's free prefetch slots; 1 when absent); ARGV[4]: '1' to have each
# message's redelivery count and count key too.
# Returns {list, raw, tag, list, raw, tag, ...}, highest priority first, or nil; with
# ARGV[4] = '1', {list, raw, tag, count, key, ...}: how many times the message went back on
# its queue (0 for a first delivery) and, when that is not 0, the key of its count in
# REDELIVERED (for the settle that removes it). A raw item that is not kombu JSON still gets
# a tag, so the worker can dead-letter it while it is safely recorded. Taking a prefetch's
# worth per call saves a wake-up and a round trip per message; each one taken is recorded
# before the next is popped. While no message anywhere has gone back (no REDELIVERED hash),
# the count costs one EXISTS per call.
FETCH = (
    _HELPERS
    + """
local limit = tonumber(ARGV[3]) or 1
local counts = ARGV[4] == '1'
local width = 3
if counts then width = 5 end
local tracked = counts and redis.call('EXISTS', REDELIVERED) == 1
-- Lists of a paused queue are skipped: their messages stay where they are, and this is the
-- step that would take them, so a pause is in force for every worker from the moment it is
-- written. One EXISTS while nothing is paused; a PAUSED that is not a hash pauses nothing.
local paused = {}
if redis.call('EXISTS', PAUSED) == 1 then
  local asked = {}
  for j = 2, #KEYS do
    local q = bell_for(KEYS[j], ARGV[1], '')
    if asked[q] == nil then asked[q] = redis.pcall('HEXISTS', PAUSED, q) == 1 end
    paused[j] = asked[q]
  end
end
local out = {}
local i = 2
while i <= #KEYS and #out < limit * width do
  local item = nil
  if not paused[i] then item = redis.call('RPOP', KEYS[i]) end
  if item then
    local own = tag_of(item)
    local tag = own
    if tag == nil or redis.call('HEXISTS', KEYS[1], tag) == 1 then
      tag = 'jobs-' .. redis.call('INCR', '"""
    + SEQUENCE
    + """')
    end
    redis.call('HSET', KEYS[1], tag, KEYS[i] .. '\\n' .. item)
    out[#out + 1] = KEYS[i]
    out[#out + 1] = item
    out[#out + 1] = tag
    if counts then
      local n, key = 0, ''
      if tracked then
        key = own or redis.sha1hex(item)
        local r = redis.pcall('HGET', REDELIVERED, key)
        n = (type(r) == 'string' and tonumber(r)) or 0
        if n == 0 then key = '' end
      end
      out[#out + 1] = n
      out[#out + 1] = key
    end
  else
    i = i + 1
  end
end
if #out == 0 then return nil end
for j = i, #KEYS do
  if not paused[j] and redis.call('LLEN', KEYS[j]) > 0 then
    ring(KEYS[j], ARGV[1], ARGV[2])
    break
  end
end
return out
"""
)

# KEYS[1]: the owner's in-flight hash. ARGV[1]: sep; ARGV[2]: bell prefix; ARGV[3..]: tags.
# Puts those messages back on their queues (a reject with requeue, a release at shutdown),
# each counted as a redelivery.
REQUEUE = (
    _HELPERS
    + """
local n = 0
for i = 3, #ARGV do
  local entry = redis.call('HGET', KEYS[1], ARGV[i])
  if entry and give_back(KEYS[1], ARGV[i], entry, ARGV[1], ARGV[2]) then
    n = n + 1
  end
end
return n
"""
)

# KEYS[1]: the owner's in-flight hash. ARGV[1]: sep; ARGV[2]: bell prefix; ARGV[3..]: the
# tags this process holds. Requeues every other entry: ones a fetch recorded whose reply
# was lost with the connection, so the worker never saw them.
REQUEUE_UNKNOWN = (
    _HELPERS
    + """
local known = {}
for i = 3, #ARGV do known[ARGV[i]] = true end
local entries = redis.call('HGETALL', KEYS[1])
local n = 0
for k = 1, #entries, 2 do
  if not known[entries[k]] and give_back(KEYS[1], entries[k], entries[k + 1], ARGV[1], ARGV[2]) then
    n = n + 1
  end
end
return n
"""
)

# KEYS[1]: owners zset; KEYS[2]: delayed zset; KEYS[3]: tick key; KEYS[4]: consumers hash.
# ARGV[1]: this owner ('' to only sweep); ARGV[2]: ms without a heartbeat before an owner
# is dead; ARGV[3]: in-flight prefix; ARGV[4]: sep; ARGV[5]: bell prefix; ARGV[6]: batch;
# ARGV[7]: the queues this owner consumes, comma-separated ('' for none).
# One call per tick: heartbeat, requeue dead owners' messages (each counted as a
# redelivery), move due delayed messages. Returns {recovered, promoted, set aside}: the last
# is how many entries wait in QUARANTINE for a live owner to dead-letter them.
# The consumed queues are checked on every tick (written only when missing or changed), so
# they come back after a Redis restart. No entry can fail the step: one that cannot go back
# on a queue (no queue named, a key that is not a list) is moved to QUARANTINE in the same
# step, and everything behind it keeps moving.
TICK_SCRIPT = (
    _HELPERS
    + """
local now = now_ms()
local dead_after = tonumber(ARGV[2])
local seen = redis.pcall('GET', KEYS[3])
local last = (type(seen) == 'string' and tonumber(seen)) or 0
redis.call('SET', KEYS[3], now)
if now - last > dead_after / 2 then
  -- Nobody ticked for a while: Redis itself or every worker was down. Judge no one on
  -- that gap; every owner gets a fresh lease and must miss its heartbeats from now on.
  local owners = redis.call('ZRANGE', KEYS[1], 0, -1)
  for _, o in ipairs(owners) do redis.call('ZADD', KEYS[1], now, o) end
end
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  local listed = redis.pcall('HGET', KEYS[4], ARGV[1])
  if failed(listed) then
    -- not ours to judge: the consumers list is for the operations page only
  elseif ARGV[7] ~= '' then
    if listed ~= ARGV[7] then redis.call('HSET', KEYS[4], ARGV[1], ARGV[7]) end
  elseif listed then
    redis.call('HDEL', KEYS[4], ARGV[1])
  end
end
local recovered = 0
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - dead_after, 'LIMIT', 0, 10)
for _, owner in ipairs(dead) do
  local h = ARGV[3] .. owner
  local entries = redis.pcall('HGETALL', h)
  if failed(entries) then entries = {} end  -- not a hash: it holds no message of ours
  local stuck = false
  for k = 1, #entries, 2 do
    local placed = place(entries[k + 1], ARGV[4], ARGV[5], 'in-flight entry of a stopped worker')
    if placed == nil then
      stuck = true
    else
      redis.call('HDEL', h, entries[k])
      if placed == 'pushed' then
        local _, item = split(entries[k + 1])
        count_return(item)
        recovered = recovered + 1
      end
    end
  end
  if not stuck then
    redis.call('DEL', h)
    redis.call('ZREM', KEYS[1], owner)
    redis.pcall('HDEL', KEYS[4], owner)
  end
end
local promoted = 0
local due = redis.pcall('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))
if failed(due) then due = {} end
for _, entry in ipairs(due) do
  local placed = place(entry, ARGV[4], ARGV[5], 'delayed entry')
  if placed then redis.call('ZREM', KEYS[2], entry) end
  if placed == 'pushed' then promoted = promoted + 1 end
end
local waiting = redis.pcall('LLEN', QUARANTINE)
if failed(waiting) then waiting = 0 end
return {recovered, promoted, waiting}
"""
)

# KEYS[1]: the queue list; KEYS[2]: its bell. ARGV[1]: the message. A publish and its wake-up
# call in one command: cheaper for the producer to build than LPUSH, LPUSH, LTRIM.
PUT = """
redis.call('LPUSH', KEYS[1], ARGV[1])
if redis.call('LLEN', KEYS[2]) == 0 then redis.call('LPUSH', KEYS[2], '1') end
return 1
"""
