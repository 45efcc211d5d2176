"""The Lua scripts of the event bus. Each runs atomically inside Redis/Valkey; every key a
script touches is passed in KEYS and shares one hash tag, so they also run on Redis Cluster."""

# Keys that live `ttl` after a job's last event are not PEXPIREd on every call: a call sets
# their expiry to ttl + ttl/16 past the server's TIME and notes that time (hash field `x`); a
# later call refreshes it only once ttl/16 has passed since. So they live at least ttl, and at
# most ttl + ttl/16, after the job's last event, for one PEXPIRE per key per ttl/16 instead of
# one per call.

# Producer: append a batch of events of one shard to their jobs' replay streams and to the
# shard stream, each event idempotently, in the order given (a later event of the same job
# sees the earlier one). The producer state of each job is read once and written once per call;
# its expiry and its replay stream's are refreshed as above.
# KEYS: shard stream, then per event: replay stream, producer state
# ARGV: replay_maxlen, ttl_ms, shard_maxlen, then 4 values per event:
#       job, meta = "<seq> <terminal 0/1> <status> <stage> <job_kind> <time_ms>", node, data
# Returns {code, last_seq} per event (flattened): 1 appended, 0 exact duplicate (no-op),
# -1 seq not increasing, -2 job closed by a terminal event.
# Shard stream entry: h = "<prev> " .. meta .. " <job>", n = node (only when set), d = data.
PUBLISH = r"""
local rmax, ttl, smax = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local states = {}
local order = {}
local n = (#ARGV - 3) / 4
for i = 1, n do
  local a = 3 + (i - 1) * 4
  local rk, pk = KEYS[2 * i], KEYS[2 * i + 1]
  local job, meta, node, data = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local sq, term = string.match(meta, '^(%d+) (%d)')
  local s = states[pk]
  if not s then
    local m = redis.call('HMGET', pk, 's', 'c', 'x')
    s = {m[1] or '0', m[2], false, rk, tonumber(m[3] or '0')}
    states[pk] = s
    order[#order + 1] = pk
  end
  local last = s[1]
  local code = 1
  if tonumber(sq) <= tonumber(last) then
    local id = sq .. '-0'
    if #redis.call('XRANGE', rk, id, id) > 0 then code = 0 else code = -1 end
  elseif s[2] == '1' then
    code = -2
  else
    redis.call('XADD', rk, 'MAXLEN', rmax, sq .. '-0', 'd', data, 'p', last, 't', term)
    local h = last .. ' ' .. meta .. ' ' .. job
    if node == '' then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', smax, '*', 'h', h, 'd', data)
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', smax, '*', 'h', h, 'n', node, 'd', data)
    end
    s[1] = sq
    s[2] = term
    s[3] = true
  end
  out[2 * i - 1] = code
  out[2 * i] = last
end
local now, slack, life
for _, pk in ipairs(order) do
  local s = states[pk]
  if s[3] then
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      slack = math.floor(tonumber(ttl) / 16)
      life = tonumber(ttl) + slack
    end
    if now - s[5] >= slack then
      redis.call('HSET', pk, 's', s[1], 'c', s[2], 'x', now)
      redis.call('PEXPIRE', pk, life)
      redis.call('PEXPIRE', s[4], life)
    else
      redis.call('HSET', pk, 's', s[1], 'c', s[2])
    end
  end
end
return out
"""

# Producer: record the user a job belongs to, once, before its first event (its streams are
# that user's only). Kept in the job's producer state, which lives as long as its replay stream
# (PUBLISH refreshes the TTL of both).
# KEYS: producer state   ARGV: owner, ttl_ms
# Returns 1 when the job is (now) the owner's, 0 when it already belongs to someone else.
OWN = r"""
local current = redis.call('HGET', KEYS[1], 'o')
if current and current ~= ARGV[1] then return 0 end
if not current then
  redis.call('HSET', KEYS[1], 'o', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

# Router: for a batch of shard stream entries of one shard, record each (job, seq) as the job's
# high-water mark, advance the job state only for a higher seq and never past a terminal state,
# and PUBLISH the routed events to the shard's fan-out channel, several per message. An entry
# whose seq is not above the mark was already routed (a router died before XACK): it is
# skipped, never published twice. Each job's state is read once and written once per call (one
# HSET), its expiry refreshed as PUBLISH does.
# KEYS: the state key of each distinct job of the batch
# ARGV: channel, ttl_ms, max frame bytes, k = #KEYS, the k job ids (in KEYS order), then 3
#       values per entry: h = "<prev> <seq> <terminal> <status> <stage> <job_kind> <time_ms> <job>",
#       node, data
# Fan-out message (domain.iter_live): records "<prev> <seq> <terminal> <job> <len>\n" + data.
# Returns the number of entries published.
ROUTE = r"""
local channel, ttl, maxframe, k = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local idx = {}
for i = 1, k do idx[ARGV[4 + i]] = i end
local st = {}
local frame, size = {}, 0
local published = 0
for b = 5 + k, #ARGV, 3 do
  local h, node, data = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local prev, seq, term, status, stage, jk, tm, job =
    string.match(h, '^(%d+) (%d+) (%d) (%d+) (%d+) (%d+) (%d+) (.+)$')
  local i = idx[job]
  local s = st[i]
  if not s then
    local m = redis.call('HMGET', KEYS[i], 'seq', 'term', 'x')
    s = {tonumber(m[1] or '0'), m[2], false, tonumber(m[3] or '0')}
    st[i] = s
  end
  local nseq = tonumber(seq)
  if nseq > s[1] and s[2] ~= '1' then
    s[1] = nseq
    s[2] = term
    s[3] = true
    s.seq, s.status, s.jk, s.tm = seq, status, jk, tm
    if stage ~= '0' then s.stage = stage end
    if node ~= '' then s.node = node end
    local rec = prev .. ' ' .. seq .. ' ' .. term .. ' ' .. job .. ' ' .. #data .. '\n'
    frame[#frame + 1] = rec
    frame[#frame + 1] = data
    size = size + #rec + #data
    published = published + 1
    if size >= maxframe then
      redis.call('PUBLISH', channel, table.concat(frame))
      frame, size = {}, 0
    end
  end
end
if size > 0 then redis.call('PUBLISH', channel, table.concat(frame)) end
local now, slack
for i = 1, k do
  local s = st[i]
  if s and s[3] then
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      slack = math.floor(tonumber(ttl) / 16)
    end
    local f = {'seq', s.seq, 'term', s[2], 'status', s.status, 'jk', s.jk, 'tm', s.tm}
    if s.stage then f[#f + 1] = 'stage'; f[#f + 1] = s.stage end
    if s.node then f[#f + 1] = 'node'; f[#f + 1] = s.node end
    local refresh = now - s[4] >= slack
    if refresh then f[#f + 1] = 'x'; f[#f + 1] = now end
    redis.call('HSET', KEYS[i], unpack(f))
    if refresh then redis.call('PEXPIRE', KEYS[i], tonumber(ttl) + slack) end
  end
end
return published
"""

# Job queue: enqueue once per job id (remembered for the dedupe TTL).
# KEYS: dedupe key, queue stream   ARGV: job_id, payload, ttl_ms
ENQUEUE = r"""
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then
  redis.call('XADD', KEYS[2], '*', 'j', ARGV[1], 'p', ARGV[2])
  return 1
end
return 0
"""

# Job queue: claim in one call what needs no waiting — first a job whose worker died (idle past
# the visibility timeout, or failed and due for retry: XAUTOCLAIM from a persistent cursor, COUNT
# 1 at a time), else the next queued one (XREADGROUP without BLOCK) — and count its attempt
# (HINCRBY). Entries deleted meanwhile are acked and skipped. The caller blocks with its own
# XREADGROUP only when nothing was there (a script cannot wait).
# KEYS: queue stream, attempts hash   ARGV: group, consumer, min_idle_ms, cursor
# Returns {cursor, how, entry_id, job_id, payload, attempt} (how: "r" reclaimed, "n" new) or
# {cursor, ""} when there is no job.
CLAIM = r"""
local stream, attempts = KEYS[1], KEYS[2]
local group, consumer, idle, cursor = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function take(how, e)
  local f = e[2]
  if not f or #f == 0 then
    redis.call('XACK', stream, group, e[1])
    return nil
  end
  local job, payload
  for i = 1, #f, 2 do
    if f[i] == 'j' then job = f[i + 1] elseif f[i] == 'p' then payload = f[i + 1] end
  end
  return {cursor, how, e[1], job, payload, redis.call('HINCRBY', attempts, job, 1)}
end
while true do
  local r = redis.call('XAUTOCLAIM', stream, group, consumer, idle, cursor, 'COUNT', 1)
  cursor = r[1]
  if r[3] and #r[3] > 0 then redis.call('XACK', stream, group, unpack(r[3])) end
  if #r[2] == 0 then break end
  local t = take('r', r[2][1])
  if t then return t end
end
local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', stream, '>')
if r then
  local t = take('n', r[1][2][1])
  if t then return t end
end
return {cursor, ''}
"""
