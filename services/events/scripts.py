"""The Lua scripts of the event bus. Each runs atomically inside Redis/Valkey; every key a
script touches is passed in KEYS and shares one hash tag, so they also run on Redis Cluster."""

# Producer: append one event to the job's replay stream and to its shard stream, idempotently.
# KEYS: shard stream, replay stream, producer state
# ARGV: job, seq, data, status, stage, node, job_kind, terminal(0/1), replay_maxlen, ttl_ms,
#       shard_maxlen, time_ms
# Returns {code, last_seq}: 1 appended, 0 exact duplicate (no-op), -1 seq not increasing,
# -2 job closed by a terminal event.
PUBLISH = r"""
local seq = tonumber(ARGV[2])
local meta = redis.call('HMGET', KEYS[3], 's', 'c')
local last = meta[1] or '0'
if seq <= tonumber(last) then
  local id = ARGV[2] .. '-0'
  if #redis.call('XRANGE', KEYS[2], id, id) > 0 then return {0, last} end
  return {-1, last}
end
if meta[2] == '1' then return {-2, last} end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[9], ARGV[2] .. '-0', 'd', ARGV[3], 'p', last, 't', ARGV[8])
redis.call('PEXPIRE', KEYS[2], ARGV[10])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[11], '*',
  'j', ARGV[1], 's', ARGV[2], 'p', last, 't', ARGV[8], 'st', ARGV[4], 'g', ARGV[5],
  'n', ARGV[6], 'k', ARGV[7], 'tm', ARGV[12], 'd', ARGV[3])
redis.call('HSET', KEYS[3], 's', ARGV[2], 'c', ARGV[8])
redis.call('PEXPIRE', KEYS[3], ARGV[10])
return {1, last}
"""

# Router: for a batch of entries of one shard, record each (job, seq) as the job's high-water
# mark, advance the job state only for a higher seq and never past a terminal state, and
# PUBLISH the event to the shard's fan-out channel. An entry whose seq is not above the
# mark was already routed (a router died before XACK): it is skipped, never published twice.
# KEYS: the state key of each entry (in order)
# ARGV: channel, ttl_ms, then 10 values per entry:
#       job, seq, prev, terminal, status, stage, node, job_kind, time_ms, data
# Returns the number of entries published.
ROUTE = r"""
local channel = ARGV[1]
local ttl = ARGV[2]
local published = 0
for i = 1, #KEYS do
  local b = 2 + (i - 1) * 10
  local seq = ARGV[b + 2]
  local st = redis.call('HMGET', KEYS[i], 'seq', 'term')
  if tonumber(seq) > tonumber(st[1] or '0') and st[2] ~= '1' then
    redis.call('HSET', KEYS[i], 'seq', seq, 'term', ARGV[b + 4], 'status', ARGV[b + 5],
      'jk', ARGV[b + 8], 'tm', ARGV[b + 9])
    if ARGV[b + 6] ~= '0' then redis.call('HSET', KEYS[i], 'stage', ARGV[b + 6]) end
    if ARGV[b + 7] ~= '' then redis.call('HSET', KEYS[i], 'node', ARGV[b + 7]) end
    redis.call('PEXPIRE', KEYS[i], ttl)
    redis.call('PUBLISH', channel,
      ARGV[b + 3] .. ' ' .. seq .. ' ' .. ARGV[b + 4] .. ' ' .. ARGV[b + 1] .. ' ' .. ARGV[b + 10])
    published = published + 1
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
