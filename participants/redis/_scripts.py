"""The Lua scripts that make Redis a participant (pure text; run atomically by Redis).

Each script runs as one atomic step on the server: no other command interleaves, so the
checks and the writes of ``prepare`` are one step, and ``commit`` applies a whole stage or
nothing of it. ``prepare``, ``commit`` and ``abort`` are idempotent by txid.

``commit`` also keeps the transactions a rollback can still undo (writes not rolled
back) in sorted sets by sequence, ``undo:all`` and ``undo:s:<session>``, so ``UNDOABLE``
reads the latest of them without walking the whole log. ``undo:seq`` is the last commit
the sets account for; commits they miss (a store written before them, or an earlier
release's commit script still running somewhere) are read from the log by ``UNDOABLE``
before it answers.
"""

# The checks a prepare (or a one-phase commit) makes before it writes anything: nil when
# all pass, else the first refusal. The facts' fields (id, expected version, claim,
# re-created version) are ARGV from ``base`` on, four a fact.
_CHECK_FN = """
local function check(p, txid, n, base)
  if redis.call('ZSCORE', p .. 'aborted', txid) then return {'ABORTED'} end
  for i = 0, n - 1 do
    local id, expected, claim = ARGV[base + 4*i], tonumber(ARGV[base + 1 + 4*i]), ARGV[base + 2 + 4*i]
    local recreated = ARGV[base + 3 + 4*i]
    local holder = redis.call('GET', p .. 'lock:' .. id)
    if holder and holder ~= txid then return {'LOCKED', id} end
    local actual = tonumber(redis.call('HGET', p .. 'versions', id) or '0')
    if actual ~= expected then return {'VERSION', id, tostring(actual)} end
    if recreated ~= '0' and redis.call('HEXISTS', p .. 'history:' .. id, recreated) == 1 then
      return {'HISTORY', id, recreated}
    end
    if claim ~= '' then
      local owner = redis.call('HGET', p .. 'claims', claim)
      if owner and owner ~= id then return {'CLAIM', claim, owner} end
      local locker = redis.call('GET', p .. 'claimlock:' .. claim)
      if locker and locker ~= txid then return {'CLAIM', claim, 'staged by another transaction'} end
    end
  end
  return nil
end
"""

PREPARE = (
    _CHECK_FN
    + """
local p, txid, stage, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('SISMEMBER', p .. 'prepared', txid) == 1 then return {'YES'} end
local refused = check(p, txid, n, 5)
if refused then return refused end
for i = 0, n - 1 do
  redis.call('SET', p .. 'lock:' .. ARGV[5 + 4*i], txid)
  if ARGV[7 + 4*i] ~= '' then redis.call('SET', p .. 'claimlock:' .. ARGV[7 + 4*i], txid) end
end
redis.call('SET', p .. 'stage:' .. txid, stage)
redis.call('SADD', p .. 'prepared', txid)
return {'YES'}
"""
)

# A fact's record, or (deleted or never written) the newest version its history holds.
HEAD = """
local p, id = ARGV[1], ARGV[2]
local record = redis.call('GET', p .. 'fact:' .. id)
if record then return {record, ''} end
local newest = 0
for _, field in ipairs(redis.call('HKEYS', p .. 'history:' .. id)) do
  newest = math.max(newest, tonumber(field))
end
return {false, tostring(newest)}
"""

# What a rollback of the transactions ARGV[2..] reads (AsyncStorage.undo_reads): for each
# fact they wrote, in the order first met, its id, the record of the version before its
# earliest one among them (or false), its committed record (or false) and, for a deleted
# one, the newest version its history holds (as HEAD).
UNDO_READS = """
local p = ARGV[1]
local order, first = {}, {}
for i = 2, #ARGV do
  local items = redis.call('HGET', p .. 'tx:' .. ARGV[i], 'written')
  if items then
    for item in string.gmatch(items, '[^\\30]+') do
      local id, version = string.match(item, '^(.-)\\31(%d+)$')
      if redis.call('HEXISTS', p .. 'history:' .. id, version) == 1 then
        local v = tonumber(version)
        if first[id] == nil then
          table.insert(order, id)
          first[id] = v
        elseif v < first[id] then
          first[id] = v
        end
      end
    end
  end
end
local before, records, newest = {}, {}, {}
for j, id in ipairs(order) do
  before[j] = false
  if first[id] > 1 then
    before[j] = redis.call('HGET', p .. 'history:' .. id, tostring(first[id] - 1)) or false
  end
  records[j] = redis.call('GET', p .. 'fact:' .. id) or false
  newest[j] = ''  -- a fact's record is its newest version: read only for a deleted one
  if not records[j] then
    local top = 0
    for _, field in ipairs(redis.call('HKEYS', p .. 'history:' .. id)) do
      top = math.max(top, tonumber(field))
    end
    newest[j] = tostring(top)
  end
end
return {order, before, records, newest}
"""

UNDO_SETS = """
local function add_undoable(p, txid, seq, session)
  redis.call('ZADD', p .. 'undo:all', seq, txid)
  if session ~= '' then redis.call('ZADD', p .. 'undo:s:' .. session, seq, txid) end
end
local function forget_undoable(p, txid)
  redis.call('ZREM', p .. 'undo:all', txid)
  local session = redis.call('HGET', p .. 'tx:' .. txid, 'session_id')
  if session and session ~= '' then redis.call('ZREM', p .. 'undo:s:' .. session, txid) end
end
"""

# Applies a stage (the writes and the transaction's meta, decoded): the facts, their
# history, the transaction log; and releases the locks a prepare of this txid took.
_APPLY_FN = """
local function apply(p, txid, now, stage)
  local written = {}
  for _, w in ipairs(stage.writes) do
    local id = w.id
    local oldclaim = redis.call('HGET', p .. 'factclaim', id)
    if oldclaim then
      redis.call('HDEL', p .. 'claims', oldclaim)
      redis.call('HDEL', p .. 'factclaim', id)
    end
    local old = redis.call('HGET', p .. 'where', id)
    if old then
      local t, s = string.match(old, '^(.-)\\31(.*)$')
      redis.call('SREM', p .. 'type:' .. t, id)
      if s ~= '' then redis.call('SREM', p .. 'session:' .. s, id) end
    end
    if w.op == 'upsert' then
      redis.call('SET', p .. 'fact:' .. id, w.record)
      redis.call('HSET', p .. 'versions', id, w.version)
      redis.call('HSET', p .. 'where', id, w.type .. '\\31' .. w.session)
      redis.call('SADD', p .. 'facts', id)
      redis.call('SADD', p .. 'type:' .. w.type, id)
      if w.session ~= '' then redis.call('SADD', p .. 'session:' .. w.session, id) end
      redis.call('HSET', p .. 'history:' .. id, w.version, w.record)
      if w.claim ~= '' then
        redis.call('HSET', p .. 'claims', w.claim, id)
        redis.call('HSET', p .. 'factclaim', id, w.claim)
      end
      table.insert(written, id .. '\\31' .. w.version)
    else
      redis.call('DEL', p .. 'fact:' .. id)
      redis.call('HDEL', p .. 'versions', id)
      redis.call('HDEL', p .. 'where', id)
      redis.call('SREM', p .. 'facts', id)
      if w.tombstone ~= '' then
        redis.call('HSET', p .. 'history:' .. id, w.tomb_version, w.tombstone)
        table.insert(written, id .. '\\31' .. w.tomb_version)
      end
    end
    if redis.call('GET', p .. 'lock:' .. id) == txid then redis.call('DEL', p .. 'lock:' .. id) end
    if w.claim ~= '' and redis.call('GET', p .. 'claimlock:' .. w.claim) == txid then
      redis.call('DEL', p .. 'claimlock:' .. w.claim)
    end
  end
  local meta = stage.meta
  for _, undone in ipairs(meta.undoes) do
    redis.call('HSET', p .. 'tx:' .. undone, 'rolled_back_by', txid)
    forget_undoable(p, undone)
  end
  local seq = redis.call('INCR', p .. 'seq')
  if meta.kind == 'write' then add_undoable(p, txid, seq, meta.session_id) end
  if tonumber(redis.call('GET', p .. 'undo:seq') or '0') == seq - 1 then
    redis.call('SET', p .. 'undo:seq', seq)  -- the sets account for every commit so far
  end
  redis.call('HSET', p .. 'tx:' .. txid, 'seq', seq, 'session_id', meta.session_id,
    'kind', meta.kind, 'undoes', cjson.encode(meta.undoes), 'committed_at', now,
    'actor', meta.actor, 'reason', meta.reason, 'written', table.concat(written, '\\30'))
  redis.call('ZADD', p .. 'txlog', seq, txid)
end
"""

# Applies a prepared stage and deletes it: 1, or 0 when there is none (committed already).
COMMIT = (
    UNDO_SETS
    + _APPLY_FN
    + """
local p, txid, now = ARGV[1], ARGV[2], ARGV[3]
local raw = redis.call('GET', p .. 'stage:' .. txid)
if not raw then return 0 end
apply(p, txid, now, cjson.decode(raw))
redis.call('DEL', p .. 'stage:' .. txid)
redis.call('SREM', p .. 'prepared', txid)
return 1
"""
)

# A one-phase commit: a prepare's checks, then the writes applied, as one atomic step (no
# stage, no locks: nothing runs between them). ARGV: prefix, txid, now, the COMMIT
# decision (JSON, or '' for none), then as PREPARE's from its stage on. With a decision
# (the last resource: the storage's own decision log, its records hash and unended set as
# KEYS), an ABORT already recorded there (recovery fenced the txid) refuses, a COMMIT means
# this very commit ran already, and otherwise the decision is recorded with the writes.
ONE_PHASE = (
    UNDO_SETS
    + _CHECK_FN
    + _APPLY_FN
    + """
local p, txid, now, decision = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if decision ~= '' then
  local existing = redis.call('HGET', KEYS[1], txid)
  if existing then
    if cjson.decode(existing).decision == 'commit' then return {'YES'} end
    return {'DECIDED'}
  end
end
local refused = check(p, txid, tonumber(ARGV[6]), 7)
if refused then return refused end
apply(p, txid, now, cjson.decode(ARGV[5]))
if decision ~= '' then
  redis.call('HSET', KEYS[1], txid, decision)
  redis.call('ZADD', KEYS[2], now, txid)
end
return {'YES'}
"""
)

UNDOABLE = (
    UNDO_SETS
    + """
local p, limit = ARGV[1], tonumber(ARGV[2])
local done = tonumber(redis.call('GET', p .. 'undo:seq') or '0')
local last = redis.call('GET', p .. 'seq')
if last and done < tonumber(last) then
  -- Commits the sets do not account for (made before they existed, or by an earlier
  -- release's commit script): bring the sets up to date from the log.
  local log = redis.call('ZRANGEBYSCORE', p .. 'txlog', '(' .. done, '+inf', 'WITHSCORES')
  for i = 1, #log, 2 do
    local txid, seq = log[i], log[i + 1]
    local t = redis.call('HMGET', p .. 'tx:' .. txid, 'kind', 'rolled_back_by', 'session_id',
      'undoes')
    if t[1] == 'write' and (not t[2] or t[2] == '') then
      add_undoable(p, txid, seq, t[3] or '')
    elseif t[1] == 'rollback' then
      for _, undone in ipairs(cjson.decode(t[4] or '[]')) do forget_undoable(p, undone) end
    end
  end
  redis.call('SET', p .. 'undo:seq', last)
end
local key = p .. 'undo:all'
if ARGV[3] then key = p .. 'undo:s:' .. ARGV[3] end
local rows = {}
for _, txid in ipairs(redis.call('ZREVRANGE', key, 0, limit - 1)) do
  table.insert(rows, {txid, redis.call('HGETALL', p .. 'tx:' .. txid)})
end
return rows
"""
)

ABORT = """
local p, txid, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local raw = redis.call('GET', p .. 'stage:' .. txid)
if raw then
  local stage = cjson.decode(raw)
  for _, w in ipairs(stage.writes) do
    if redis.call('GET', p .. 'lock:' .. w.id) == txid then redis.call('DEL', p .. 'lock:' .. w.id) end
    if w.claim ~= '' and redis.call('GET', p .. 'claimlock:' .. w.claim) == txid then
      redis.call('DEL', p .. 'claimlock:' .. w.claim)
    end
  end
  redis.call('DEL', p .. 'stage:' .. txid)
end
redis.call('SREM', p .. 'prepared', txid)
redis.call('ZADD', p .. 'aborted', now, txid)
redis.call('ZREMRANGEBYSCORE', p .. 'aborted', '-inf', now - 86400)
return 1
"""
