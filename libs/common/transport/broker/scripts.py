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
"""

from __future__ import annotations

INFLIGHT_PREFIX = "jobs.inflight:"
OWNERS = "jobs.owners"
TICK = "jobs.tick"
DELAYED = "jobs.delayed"
BELL_PREFIX = "jobs.bell:"
SEQUENCE = "jobs.seq"
CONSUMERS = "jobs.consumers"

# Shared Lua helpers: split an entry, ring a queue's bell, put an entry back at the
# consuming end of its list (it runs next: it had already waited its turn).
_HELPERS = """
local function bell_for(list, sep, prefix)
  local p = string.find(list, sep, 1, true)
  if p then list = string.sub(list, 1, p - 1) end
  return prefix .. list
end
local function ring(list, sep, prefix)
  local bell = bell_for(list, sep, prefix)
  if redis.call('LLEN', bell) == 0 then redis.call('LPUSH', bell, '1') end
end
local function split(entry)
  local nl = string.find(entry, '\\n', 1, true)
  return string.sub(entry, 1, nl - 1), string.sub(entry, nl + 1)
end
local function push_front(entry, sep, prefix)
  local list, item = split(entry)
  redis.call('RPUSH', list, item)
  ring(list, sep, prefix)
end
local function give_back(hash, tag, entry, sep, prefix)
  push_front(entry, sep, prefix)
  redis.call('HDEL', hash, tag)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS[1]: the owner's in-flight hash; KEYS[2..]: queue lists, highest priority first.
# ARGV[1]: kombu's priority separator; ARGV[2]: bell prefix; ARGV[3]: at most this many
# messages (the consumer's free prefetch slots; 1 when absent).
# Returns {list, raw, tag, list, raw, tag, ...}, highest priority first, or nil. A raw item
# that is not kombu JSON still gets a tag, so the worker can dead-letter it while it is
# safely recorded. Taking a prefetch's worth per call saves a wake-up and a round trip per
# message; each one taken is recorded before the next is popped.
FETCH = (
    _HELPERS
    + """
local limit = tonumber(ARGV[3]) or 1
local out = {}
local i = 2
while i <= #KEYS and #out < limit * 3 do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local tag
    local ok, msg = pcall(cjson.decode, item)
    if ok and type(msg) == 'table' and type(msg['properties']) == 'table' then
      tag = msg['properties']['delivery_tag']
    end
    if type(tag) ~= 'string' or tag == '' or redis.call('HEXISTS', KEYS[1], tag) == 1 then
      tag = 'jobs-' .. redis.call('INCR', '"""
    + SEQUENCE
    + """')
    end
    redis.call('HSET', KEYS[1], tag, KEYS[i] .. '\\n' .. item)
    out[#out + 1] = KEYS[i]
    out[#out + 1] = item
    out[#out + 1] = tag
  else
    i = i + 1
  end
end
if #out == 0 then return nil end
for j = i, #KEYS do
  if redis.call('LLEN', KEYS[j]) > 0 then
    ring(KEYS[j], ARGV[1], ARGV[2])
    break
  end
end
return out
"""
)

# KEYS[1]: the owner's in-flight hash. ARGV[1]: sep; ARGV[2]: bell prefix; ARGV[3..]: tags.
# Puts those messages back on their queues (a reject with requeue, a release at shutdown).
REQUEUE = (
    _HELPERS
    + """
local n = 0
for i = 3, #ARGV do
  local entry = redis.call('HGET', KEYS[1], ARGV[i])
  if entry then
    give_back(KEYS[1], ARGV[i], entry, ARGV[1], ARGV[2])
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
  if not known[entries[k]] then
    give_back(KEYS[1], entries[k], entries[k + 1], ARGV[1], ARGV[2])
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
# One call per tick: heartbeat, requeue dead owners' messages, move due delayed messages.
# The consumed queues are checked on every tick (written only when missing or changed), so
# they come back after a Redis restart.
TICK_SCRIPT = (
    _HELPERS
    + """
local now = now_ms()
local dead_after = tonumber(ARGV[2])
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('SET', KEYS[3], now)
if now - last > dead_after / 2 then
  -- Nobody ticked for a while: Redis itself or every worker was down. Judge no one on
  -- that gap; every owner gets a fresh lease and must miss its heartbeats from now on.
  local owners = redis.call('ZRANGE', KEYS[1], 0, -1)
  for _, o in ipairs(owners) do redis.call('ZADD', KEYS[1], now, o) end
end
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  local listed = redis.call('HGET', KEYS[4], ARGV[1])
  if ARGV[7] ~= '' then
    if listed ~= ARGV[7] then redis.call('HSET', KEYS[4], ARGV[1], ARGV[7]) end
  elseif listed then
    redis.call('HDEL', KEYS[4], ARGV[1])
  end
end
local recovered = 0
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - dead_after, 'LIMIT', 0, 10)
for _, owner in ipairs(dead) do
  local h = ARGV[3] .. owner
  local entries = redis.call('HGETALL', h)
  for k = 1, #entries, 2 do
    push_front(entries[k + 1], ARGV[4], ARGV[5])
    recovered = recovered + 1
  end
  redis.call('DEL', h)
  redis.call('ZREM', KEYS[1], owner)
  redis.call('HDEL', KEYS[4], owner)
end
local promoted = 0
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))
for _, entry in ipairs(due) do
  push_front(entry, ARGV[4], ARGV[5])
  redis.call('ZREM', KEYS[2], entry)
  promoted = promoted + 1
end
return {recovered, promoted}
"""
)

# KEYS[1]: the queue list; KEYS[2]: its bell. ARGV[1]: the message. A publish and its wake-up
# call in one command: cheaper for the producer to build than LPUSH, LPUSH, LTRIM.
PUT = """
redis.call('LPUSH', KEYS[1], ARGV[1])
if redis.call('LLEN', KEYS[2]) == 0 then redis.call('LPUSH', KEYS[2], '1') end
return 1
"""
