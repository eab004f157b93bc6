-- kv.lua: executes one etcd v3 request (range, put, delete, txn, or a lease request)
-- atomically. Leases that are due are revoked first, each at a revision of its own,
-- so that the revision order stays causal even when no reaper ran in time.
--
-- KEYS (all carry the namespace's hash tag, e.g. "{coord}:rev"):
--   1 rev      STRING  current revision (absent: 1, as a new etcd)
--   2 compact  STRING  compacted revision (absent: 0)
--   3 kv       HASH    key -> msgpack {create, mod, version, lease, value} of the live version
--   4 keys     ZSET    live keys, score 0, for lexicographic ranges
--   5 hist     HASH    key.."\0"..%016x(rev) -> superseded version (same shape) or tombstone {0}
--   6 hkeys    ZSET    the members of hist, score 0, for "newest version at or below R"
--   7 log      STREAM  one entry per revision, ID "<rev>-0": field "t" -> Redis server time
--                      (ms), field "e" -> msgpack array of the revision's events, each
--                      {type ("put"|"delete"), key, create, mod, version, lease, value}
--   8 leases   HASH    lease ID (decimal) -> granted TTL in seconds
--   9 lkeys    ZSET    score 0, members %019d(lease ID).."\0"..key: the keys attached to each lease
--  10 ldue     ZSET    lease ID -> deadline (Redis server time, milliseconds)
--  11 leaseseq STRING  the last lease ID chosen by the store (IDs start at the epoch, see grant)
--  12 id       HASH    the store's identity, created with the namespace (or when it is
--                      found missing: the data was lost): "id" (24 hex digits, new for
--                      every incarnation of the data), "epoch" (microseconds), "base"
--                      (the revision at which the epoch began), "run" (the Redis run_id
--                      the epoch belongs to), "epochs" (msgpack list of {base, epoch},
--                      oldest first). A fencing token of a key created at revision r in
--                      an epoch is epoch + (r - base): see the "hello" request.
--  13 ttlkey   STRING  (lease requests only) "{ns}:lease:<id>", whose TTL mirrors the lease's,
--                      so that its keyspace `expired` event can wake reapers
-- ARGV: one msgpack request or several (a batch: each runs as if called on its own,
--   in order, and the reply is an array of their replies, a Redis error for one that
--   failed with one; a replica's READONLY answers the whole call). A request is one of
--       {"range", key, rangeEnd, limit, revision, sortOrder, sortTarget, keysOnly, countOnly,
--        minMod, maxMod, minCreate, maxCreate}
--       {"put", key, value, lease, prevKV, ignoreValue, ignoreLease}
--       {"delete", key, rangeEnd, prevKV}
--       {"txn", {compare...}, {successOp...}, {failureOp...}}
--       {"grant", id ("0": the store chooses), ttl}   {"revoke", id}   {"keepalive", id}
--       {"ttl", id, withKeys}   {"leases"}   {"reap"}
--       {"hello", runID}: sent by every client connection when it (re)connects, with the
--         run_id of the Redis process it reached: a different one than the epoch's
--         means Redis restarted or failed over since, possibly losing writes, so a new
--         epoch begins, at the server's time in microseconds and above every token of
--         the previous one; tokens therefore never repeat (provided the servers' clocks
--         do not step back and the store commits under a million revisions a second)
--         compare = {target ("value"|"version"|"create"|"mod"|"lease"),
--                    result ("="|"!="|"<"|">"), key, rangeEnd, operand}
--     lease IDs travel as decimal strings (they do not fit a Lua number).
-- Reply: msgpack {revision, result, storeID, epoch, base} or {false, errorCode, message, revision,
--   storeID, epoch, base} (a refused request tells the store's identity too, so that a client
--   notices a reset from it: a keep-alive of a lease the lost history had), where result is
--   {"range", {kv...}, more, count}   kv = {key, create, mod, version, lease, value}
--   {"put", prevKV or false}
--   {"delete", deleted, {prevKV...}}
--   {"txn", succeeded, {result...}}
--   {"grant", id, ttl}   {"revoke"}   {"keepalive", id, ttl}
--   {"ttl", id, ttl (-1: not found), grantedTTL, {key...}}   {"leases", {id...}}   {"reap", revoked}
--   {"hello", {{base, epoch}...}} (every epoch of the store, oldest first)

-- The state of one call, set by `main` when the call begins. Loaded by FUNCTION LOAD
-- these locals outlive the call (the library's chunk runs once, its functions are
-- called many times), so main sets every one of them, and nothing else keeps state.
local K_REV, K_COMPACT, K_KV, K_KEYS, K_HIST, K_HKEYS, K_LOG, K_LEASES
local K_LKEYS, K_LDUE, K_LEASESEQ, K_ID, K_TTLKEY
local current
-- The state of the request being run (see run below: one call may carry several).
local compacted -- read only when a request names a past revision (checkRangeRevision)
local nextRevision -- set once due leases are reaped
local changed
local events
-- now (ms) also as text: redis.call prints a Lua number with "%.17g", glibc's
-- floating-point printing, and Redis's own text of an integer is the same digits, so
-- the numbers sent often (the revision, the time, ZADD's score 0) go as text made once.
local clock, now, nowText, nowMicros
-- The store's identity (see KEYS[12]); `created`: this call created it.
local storeID, epoch, base, created

local function hello(request)
  local run = request[2]
  local epochs = cmsgpack.unpack(redis.call('HGET', K_ID, 'epochs') or cmsgpack.pack({}))
  if created then
    redis.call('HSET', K_ID, 'run', run)
    created = false
  elseif run ~= '' and run ~= redis.call('HGET', K_ID, 'run') then
    -- Above every token of the epoch that ends (epoch + revisions since its base) and
    -- at the server's time, which is above every token of any epoch begun earlier.
    epoch, base = math.max(nowMicros, epoch + (current - base) + 1), current
    epochs[#epochs + 1] = {base, epoch}
    -- HDEL first, as deleteKey does: over maxmemory Redis refuses a script's first
    -- write that can grow memory but not those after a write, and a Redis that
    -- restarted full must still begin the new epoch (its tokens would repeat).
    redis.call('HDEL', K_ID, 'run')
    redis.call('HSET', K_ID, 'epoch', epoch, 'base', base, 'run', run, 'epochs', cmsgpack.pack(epochs))
  end
  return cmsgpack.pack({current, {'hello', epochs}, storeID, epoch, base})
end

local function fail(code, message)
  error({code = code, message = message})
end

local function hex(revision) return string.format('%016x', revision) end

-- Byte-wise comparison (Lua's own uses the locale): -1, 0 or 1.
local function compareBytes(a, b)
  if a == b then return 0 end
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y and -1 or 1 end
  end
  return #a < #b and -1 or 1
end

-- Numeric comparison of non-negative decimal strings (lease IDs).
local function compareDecimal(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  return compareBytes(a, b)
end

-- A record of kv (or hist) as a table; `packed` keeps the stored bytes, which archive
-- writes as they are instead of encoding the record again.
local function decode(packed)
  local r = cmsgpack.unpack(packed)
  return {create = r[1], mod = r[2], version = r[3], lease = r[4], value = r[5], packed = packed}
end

local function encode(r) return cmsgpack.pack({r.create, r.mod, r.version, r.lease, r.value}) end

-- The live records this request has read or written, by key (false: no live
-- version), so that a transaction reads each key from Redis once: its compare, its
-- put and its range of the same key cost one HGET. put and deleteKey keep it current.
local liveCache

local function live(key)
  local cached = liveCache[key]
  if cached ~= nil then return cached or nil end
  local packed = redis.call('HGET', K_KV, key)
  local r = packed and decode(packed) or false
  liveCache[key] = r
  return r or nil
end

-- The version of `key` visible at `revision`, or nil.
local function versionAt(key, revision)
  local r = live(key)
  if r and r.mod <= revision then return r end
  -- Members of other keys that start with key.."\0" can sort in between: page past them.
  local offset = 0
  while true do
    local members = redis.call('ZREVRANGEBYLEX', K_HKEYS, '[' .. key .. '\0' .. hex(revision), '[' .. key .. '\0', 'LIMIT', offset, 64)
    for _, member in ipairs(members) do
      if #member == #key + 17 then
        local old = cmsgpack.unpack(redis.call('HGET', K_HIST, member))
        if old[1] == 0 then return nil end
        return {create = old[1], mod = old[2], version = old[3], lease = old[4], value = old[5]}
      end
    end
    if #members < 64 then return nil end
    offset = offset + 64
  end
end

-- The lexicographic bounds of [key, rangeEnd) for ZRANGEBYLEX; nil for a single key.
local function bounds(key, rangeEnd)
  if rangeEnd == '' then return nil end
  if rangeEnd == '\0' then return '[' .. key, '+' end
  return '[' .. key, '(' .. rangeEnd
end

-- Keys in [key, rangeEnd) visible at `revision` (all keys with history when reading the past).
local function keysIn(key, rangeEnd, revision)
  local low, high = bounds(key, rangeEnd)
  if not low then return {key} end
  if compareBytes(key, rangeEnd) >= 0 and rangeEnd ~= '\0' then return {} end
  local keys = redis.call('ZRANGEBYLEX', K_KEYS, low, high)
  if revision >= (changed and nextRevision or current) then return keys end
  local seen, all = {}, {}
  for _, k in ipairs(keys) do seen[k] = true; all[#all + 1] = k end
  -- History members are key.."\0"..revision: when rangeEnd holds a NUL, members of
  -- keys below rangeEnd can sort above it, so bound the scan before that NUL.
  local nul = string.find(rangeEnd, '\0', 1, true)
  local hhigh = high
  if rangeEnd ~= '\0' and nul then hhigh = '(' .. string.sub(rangeEnd, 1, nul - 1) .. '\1' end
  for _, member in ipairs(redis.call('ZRANGEBYLEX', K_HKEYS, low, hhigh)) do
    local k = string.sub(member, 1, #member - 17)
    if not seen[k] and compareBytes(k, key) >= 0 and (rangeEnd == '\0' or compareBytes(k, rangeEnd) < 0) then
      seen[k] = true; all[#all + 1] = k
    end
  end
  table.sort(all, function(a, b) return compareBytes(a, b) < 0 end)
  return all
end

local function kvReply(key, r, keysOnly)
  return {key, r.create, r.mod, r.version, r.lease, keysOnly and '' or r.value}
end

-- A range of the live keys in key order with no filter: the count comes from the keys
-- index (ZLEXCOUNT) and only the keys within the limit are read, so a page of a large
-- prefix (a limit, as clients paginate) or a count costs what it returns, not the whole
-- range. Same reply as the general path below (an empty interval, key at or past
-- rangeEnd, counts 0 in the index too).
local function rangeLiveByKey(key, rangeEnd, limit, descending, keysOnly, countOnly)
  local low, high = bounds(key, rangeEnd)
  local count = redis.call('ZLEXCOUNT', K_KEYS, low, high)
  local kvs = {}
  if countOnly or count == 0 then return {'range', kvs, false, count} end
  local n = (limit > 0 and limit < count) and limit or count
  local keys
  if descending then
    keys = redis.call('ZREVRANGEBYLEX', K_KEYS, high, low, 'LIMIT', 0, n)
  else
    keys = redis.call('ZRANGEBYLEX', K_KEYS, low, high, 'LIMIT', 0, n)
  end
  -- HMGET in slices: unpack has a stack limit of a few thousand values.
  for first = 1, #keys, 1000 do
    local last = math.min(first + 999, #keys)
    local values = redis.call('HMGET', K_KV, unpack(keys, first, last))
    for i = first, last do
      kvs[#kvs + 1] = kvReply(keys[i], decode(values[i - first + 1]), keysOnly)
    end
  end
  return {'range', kvs, limit > 0 and count > limit, count}
end

local function range(op)
  local key, rangeEnd, limit, revision = op[2], op[3], op[4], op[5]
  local sortOrder, sortTarget, keysOnly, countOnly = op[6], op[7], op[8], op[9]
  local minMod, maxMod, minCreate, maxCreate = op[10], op[11], op[12], op[13]
  local head = changed and nextRevision or current
  -- Revisions were checked by choosePath before anything was written (as etcd's
  -- checkRequestRange does, against the revision before the txn).
  local at = revision > 0 and revision or head
  if at >= head and rangeEnd ~= '' and sortTarget == 'key' and minMod == 0 and maxMod == 0
    and minCreate == 0 and maxCreate == 0 then
    return rangeLiveByKey(key, rangeEnd, limit, sortOrder == 'descend', keysOnly, countOnly)
  end
  local found = {}
  for _, k in ipairs(keysIn(key, rangeEnd, at)) do
    local r = (at >= head) and live(k) or versionAt(k, at)
    if r then r.key = k; found[#found + 1] = r end
  end
  local count = #found
  local kept = {}
  for _, r in ipairs(found) do
    if (minMod == 0 or r.mod >= minMod) and (maxMod == 0 or r.mod <= maxMod)
      and (minCreate == 0 or r.create >= minCreate) and (maxCreate == 0 or r.create <= maxCreate) then
      kept[#kept + 1] = r
    end
  end
  if sortOrder == 'none' and sortTarget ~= 'key' then sortOrder = 'ascend' end
  if sortOrder ~= 'none' then
    -- Ties stay in key order, both ways, as etcd's sort (Go's, stable up to 12
    -- results) leaves them; table.sort alone is not stable.
    local field, descending = sortTarget, sortOrder == 'descend'
    local compare
    if field == 'key' or field == 'value' then
      compare = function(a, b) return compareBytes(a[field], b[field]) end
    else
      compare = function(a, b) return a[field] < b[field] and -1 or (a[field] > b[field] and 1 or 0) end
    end
    table.sort(kept, function(a, b)
      local c = compare(a, b)
      if c == 0 then return compareBytes(a.key, b.key) < 0 end
      if descending then return c > 0 end
      return c < 0
    end)
  end
  local kvs, more = {}, false
  if not countOnly then
    for i, r in ipairs(kept) do
      if limit > 0 and i > limit then more = true; break end
      kvs[#kvs + 1] = kvReply(r.key, r, keysOnly)
    end
  end
  return {'range', kvs, more, count}
end

local function archive(key, r)
  local member = key .. '\0' .. hex(r.mod)
  redis.call('HSET', K_HIST, member, r.packed or encode(r))
  redis.call('ZADD', K_HKEYS, '0', member)
end

-- lkeys members: the lease ID zero-padded to 19 digits, NUL, the key.
local function leasePrefix(lease) return string.rep('0', 19 - #lease) .. lease .. '\0' end
local function leaseMember(lease, key) return leasePrefix(lease) .. key end

-- The keys attached to a lease, as lkeys members.
local function leaseMembers(lease)
  local prefix = leasePrefix(lease)
  return redis.call('ZRANGEBYLEX', K_LKEYS, '[' .. prefix, '(' .. string.sub(prefix, 1, -2) .. '\1')
end

local function deleteKey(k, old, revision)
  -- HDEL first: over maxmemory Redis refuses a script's first write that can grow
  -- memory (HSET, ZADD) but not those after a write, so deletes go on, as etcd's go
  -- on under its NOSPACE alarm.
  redis.call('HDEL', K_KV, k)
  -- archive(k, old) and the tombstone, in one HSET and one ZADD.
  local member = k .. '\0' .. hex(old.mod)
  local tombstone = k .. '\0' .. hex(revision)
  redis.call('HSET', K_HIST, member, old.packed or encode(old), tombstone, cmsgpack.pack({0}))
  redis.call('ZADD', K_HKEYS, '0', member, '0', tombstone)
  liveCache[k] = false
  redis.call('ZREM', K_KEYS, k)
  if old.lease ~= '0' then redis.call('ZREM', K_LKEYS, leaseMember(old.lease, k)) end
  return {'delete', k, 0, revision, 0, '0', ''}
end

-- Revokes a lease now: its keys are deleted at one new revision (none if it has no keys).
local function revokeLease(lease)
  local members = leaseMembers(lease)
  local revision = current + 1
  local revoked = {}
  for _, member in ipairs(members) do
    local k = string.sub(member, 21)
    local old = live(k)
    if old then revoked[#revoked + 1] = deleteKey(k, old, revision) end
    redis.call('ZREM', K_LKEYS, member)
  end
  redis.call('HDEL', K_LEASES, lease)
  redis.call('ZREM', K_LDUE, lease)
  if #revoked > 0 then
    local text = string.format('%d', revision)
    redis.call('SET', K_REV, text)
    redis.call('XADD', K_LOG, text .. '-0', 't', nowText, 'e', cmsgpack.pack(revoked))
    current = revision
  end
end

-- Revokes leases whose deadline has passed, oldest first, at most 100 per script call
-- (as etcd rate-limits revocations), so that a mass expiry never stalls one call, a
-- batch of requests included. Once a look finds fewer than it may take, nothing else
-- is due at this call's `now` (no request makes a lease due sooner than now).
local reapBudget
local function reapDue()
  if reapBudget == 0 then return 0 end
  local due = redis.call('ZRANGEBYSCORE', K_LDUE, '-inf', nowText, 'LIMIT', '0', string.format('%d', reapBudget))
  for _, lease in ipairs(due) do revokeLease(lease) end
  reapBudget = (#due < reapBudget) and 0 or (reapBudget - #due)
  return #due
end

local reaped

-- Checks a put before anything is written (a failing script is not rolled back).
local function checkPut(op)
  local key, lease, ignoreValue, ignoreLease = op[2], op[4], op[6], op[7]
  if key == '' then fail('emptyKey', 'key is not provided: etcd keys must not be empty') end
  if (ignoreValue or ignoreLease) and redis.call('HEXISTS', K_KV, key) == 0 then
    fail('keyNotFound', 'key not found: ignoreValue and ignoreLease need an existing key')
  end
  if not ignoreLease and lease ~= '0' and redis.call('HEXISTS', K_LEASES, lease) == 0 then
    fail('leaseNotFound', 'requested lease ' .. lease .. ' not found; grant it first or put without a lease')
  end
end

local function put(op)
  local key, value, lease, prevKV, ignoreValue, ignoreLease = op[2], op[3], op[4], op[5], op[6], op[7]
  local old = live(key)
  if ignoreValue then value = old.value end
  if ignoreLease then lease = old.lease end
  if old and old.lease ~= '0' and old.lease ~= lease then redis.call('ZREM', K_LKEYS, leaseMember(old.lease, key)) end
  if lease ~= '0' then redis.call('ZADD', K_LKEYS, '0', leaseMember(lease, key)) end
  local r
  if old then
    archive(key, old)
    r = {create = old.create, mod = nextRevision, version = old.version + 1, lease = lease, value = value}
  else
    redis.call('ZADD', K_KEYS, '0', key)
    r = {create = nextRevision, mod = nextRevision, version = 1, lease = lease, value = value}
  end
  r.packed = encode(r)
  redis.call('HSET', K_KV, key, r.packed)
  liveCache[key] = r
  changed = true
  events[#events + 1] = {'put', key, r.create, r.mod, r.version, r.lease, r.value}
  return {'put', (prevKV and old) and kvReply(key, old, false) or false}
end

local function delete(op)
  local key, rangeEnd, prevKV = op[2], op[3], op[4]
  local deleted, previous = 0, {}
  for _, k in ipairs(keysIn(key, rangeEnd, nextRevision)) do
    local old = live(k)
    if old then
      events[#events + 1] = deleteKey(k, old, nextRevision)
      deleted = deleted + 1
      if prevKV then previous[#previous + 1] = kvReply(k, old, false) end
    end
  end
  if deleted > 0 then changed = true end
  return {'delete', deleted, previous}
end

local function compareHolds(c)
  local target, result, key, rangeEnd, operand = c[1], c[2], c[3], c[4], c[5]
  local head = changed and nextRevision or current
  local subjects = {}
  for _, k in ipairs(keysIn(key, rangeEnd, head)) do
    local r = live(k)
    if r then subjects[#subjects + 1] = r end
  end
  if #subjects == 0 then
    if target == 'value' then return false end
    subjects = {{create = 0, mod = 0, version = 0, lease = '0', value = ''}}
  end
  for _, r in ipairs(subjects) do
    local order
    if target == 'value' then order = compareBytes(r.value, operand)
    elseif target == 'lease' then order = compareDecimal(r.lease, operand)
    else
      local v = r[target]
      order = (v < operand) and -1 or ((v > operand) and 1 or 0)
    end
    local holds = (result == '=' and order == 0) or (result == '!=' and order ~= 0)
      or (result == '<' and order < 0) or (result == '>' and order > 0)
    if not holds then return false end
  end
  return true
end

local execute

-- Decides every txn's branch, nested ones included, on the state before any write
-- (as etcd does), and checks the puts on that path.
local function checkRangeRevision(revision)
  if revision > current then fail('futureRevision', 'required revision ' .. revision .. ' is a future revision; the current revision is ' .. current) end
  if revision <= 0 then return end
  compacted = compacted or tonumber(redis.call('GET', K_COMPACT) or '0')
  if revision < compacted then
    fail('compacted', 'required revision ' .. revision .. ' has been compacted; the oldest available is ' .. compacted)
  end
end

local pathDeletes

local function choosePath(op)
  if op[1] == 'put' then
    checkPut(op)
    if op[6] or op[7] then
      -- An earlier delete on the path (a from-key one passes checkIntervals, as in
      -- etcd) would leave nothing for ignoreValue/ignoreLease to keep.
      for _, d in ipairs(pathDeletes) do
        if op[2] == d[1] or (d[2] ~= '' and compareBytes(op[2], d[1]) >= 0 and (d[2] == '\0' or compareBytes(op[2], d[2]) < 0)) then
          fail('keyNotFound', 'key not found: an earlier delete in the txn removes the key that ignoreValue/ignoreLease would keep')
        end
      end
    end
  end
  if op[1] == 'delete' then pathDeletes[#pathDeletes + 1] = {op[2], op[3]} end
  if op[1] == 'range' then checkRangeRevision(op[5]) end
  if op[1] ~= 'txn' then return end
  local succeeded = true
  for _, c in ipairs(op[2]) do
    if not compareHolds(c) then succeeded = false; break end
  end
  op.succeeded = succeeded
  for _, inner in ipairs(succeeded and op[3] or op[4]) do choosePath(inner) end
end

local function txn(op)
  local results = {}
  for _, inner in ipairs(op.succeeded and op[3] or op[4]) do results[#results + 1] = execute(inner) end
  return {'txn', op.succeeded, results}
end

local MIN_TTL, MAX_TTL = 2, 9000000000

local function leaseRequest(op)
  local kind, lease = op[1], op[2]
  if kind == 'grant' then
    local ttl = math.max(op[3], MIN_TTL)
    if op[3] > MAX_TTL then fail('invalidArgument', 'too large lease TTL: at most ' .. MAX_TTL .. ' seconds') end
    if lease == '0' then
      -- The store's IDs start at the epoch (the server's time in microseconds when the
      -- data began, or when Redis last restarted or failed over, see "hello"), so a
      -- history that lost data never hands out an ID of the history before it: a client
      -- of the old one revoking its lease, or keeping it alive, finds no lease instead
      -- of another client's. (Below 2^53, so Lua's numbers hold them exactly.)
      if tonumber(redis.call('GET', K_LEASESEQ) or '0') < epoch then
        redis.call('SET', K_LEASESEQ, string.format('%d', epoch))
      end
      repeat lease = string.format('%d', redis.call('INCR', K_LEASESEQ)) until redis.call('HEXISTS', K_LEASES, lease) == 0
    elseif redis.call('HEXISTS', K_LEASES, lease) == 1 then
      fail('leaseExists', 'lease ' .. lease .. ' already exists; revoke it first or let the store choose an ID')
    end
    redis.call('HSET', K_LEASES, lease, ttl)
    redis.call('ZADD', K_LDUE, now + ttl * 1000, lease)
    if K_TTLKEY then redis.call('SET', K_TTLKEY, lease, 'PX', ttl * 1000) end
    return {'grant', lease, ttl}
  elseif kind == 'leases' then
    return {'leases', redis.call('HKEYS', K_LEASES)}
  elseif kind == 'reap' then
    return {'reap', reaped}
  end
  local granted = redis.call('HGET', K_LEASES, lease)
  if kind == 'ttl' then
    if not granted then return {'ttl', lease, -1, 0, {}} end
    local remaining = math.floor((tonumber(redis.call('ZSCORE', K_LDUE, lease)) - now) / 1000)
    local keys = {}
    if op[3] then
      for _, member in ipairs(leaseMembers(lease)) do keys[#keys + 1] = string.sub(member, 21) end
    end
    return {'ttl', lease, math.max(remaining, 0), tonumber(granted), keys}
  end
  if not granted then fail('leaseNotFound', 'requested lease ' .. lease .. ' not found: it expired, was revoked or was never granted') end
  if kind == 'revoke' then
    revokeLease(lease)
    if K_TTLKEY then redis.call('DEL', K_TTLKEY) end
    return {'revoke'}
  end
  -- keepalive
  local ttl = tonumber(granted)
  redis.call('ZADD', K_LDUE, now + ttl * 1000, lease)
  if K_TTLKEY then redis.call('SET', K_TTLKEY, lease, 'PX', ttl * 1000) end
  return {'keepalive', lease, ttl}
end

execute = function(op)
  local kind = op[1]
  if kind == 'grant' or kind == 'revoke' or kind == 'keepalive' or kind == 'ttl' or kind == 'leases' or kind == 'reap' then
    return leaseRequest(op)
  end
  if kind == 'range' then return range(op)
  elseif kind == 'put' then return put(op)
  elseif kind == 'delete' then return delete(op)
  elseif kind == 'txn' then return txn(op)
  end
  fail('invalidArgument', 'unknown operation ' .. tostring(kind))
end

-- etcd's checkIntervals (v3rpc/key.go): a branch may not put one key twice, nor put a
-- key that one of its deletes (or a nested txn's deletes) covers. Intervals are taken
-- literally, so a from-key delete (rangeEnd "\0") covers nothing here, as in etcd.
local function covers(dels, k)
  for _, d in ipairs(dels) do
    if d[2] == '' then
      if k == d[1] then return true end
    elseif compareBytes(k, d[1]) >= 0 and compareBytes(k, d[2]) < 0 then
      return true
    end
  end
  return false
end

local function checkIntervals(ops)
  local dels, puts = {}, {}
  local duplicate = 'duplicate key given in txn request: a branch writes one key twice or deletes a key it puts'
  for _, op in ipairs(ops) do
    if op[1] == 'delete' then dels[#dels + 1] = {op[2], op[3]} end
  end
  for _, op in ipairs(ops) do
    if op[1] == 'txn' then
      local putsThen, delsThen = checkIntervals(op[3])
      local putsElse, delsElse = checkIntervals(op[4])
      for k in pairs(putsThen) do
        if puts[k] or covers(dels, k) then fail('duplicateKey', duplicate) end
        puts[k] = true
      end
      for k in pairs(putsElse) do
        if puts[k] and not putsThen[k] then fail('duplicateKey', duplicate) end
        if covers(dels, k) then fail('duplicateKey', duplicate) end
        puts[k] = true
      end
      for _, d in ipairs(delsThen) do dels[#dels + 1] = d end
      for _, d in ipairs(delsElse) do dels[#dels + 1] = d end
    end
  end
  for _, op in ipairs(ops) do
    if op[1] == 'put' then
      local k = op[2]
      if puts[k] or covers(dels, k) then fail('duplicateKey', duplicate) end
      puts[k] = true
    end
  end
  return puts, dels
end

-- A request's body, run protected (see run): a refusal raised by fail() ends it.
local function runRequest(request)
  if request[1] == 'txn' then
    checkIntervals(request[3]); checkIntervals(request[4])
  end
  choosePath(request)
  return execute(request)
end

-- Runs one request (ARGV element): its reply is the msgpack described at the top.
local function run(packed)
  local request = cmsgpack.unpack(packed)
  if request[1] == 'hello' then return hello(request) end
  compacted, changed, events, liveCache, pathDeletes = nil, false, {}, {}, {}
  reaped = reapDue()
  nextRevision = current + 1
  local ok, outcome = pcall(runRequest, request)
  if not ok then
    if type(outcome) == 'table' and outcome.code then
      return cmsgpack.pack({false, outcome.code, outcome.message, current, storeID, epoch, base})
    end
    error(outcome)
  end
  if changed then
    local text = string.format('%d', nextRevision)
    redis.call('SET', K_REV, text)
    redis.call('XADD', K_LOG, text .. '-0', 't', nowText, 'e', cmsgpack.pack(events))
    current = nextRevision
  end
  return cmsgpack.pack({current, outcome, storeID, epoch, base})
end

-- A call's reply, once the records it read are let go (a function's locals outlive
-- the call: a large range's would stay in memory until the next call).
local function finish(reply)
  events, liveCache, pathDeletes = nil, nil, nil
  return reply
end

-- One call: KEYS and ARGV as described at the top.
local function main(keys, argv)
  K_REV, K_COMPACT, K_KV, K_KEYS, K_HIST, K_HKEYS, K_LOG, K_LEASES = keys[1], keys[2], keys[3], keys[4], keys[5], keys[6], keys[7], keys[8]
  K_LKEYS, K_LDUE, K_LEASESEQ, K_ID, K_TTLKEY = keys[9], keys[10], keys[11], keys[12], keys[13]
  current = tonumber(redis.call('GET', K_REV) or '1')
  compacted, nextRevision, changed, events = nil, nil, false, {}
  clock = redis.call('TIME')
  local seconds, micros = tonumber(clock[1]), tonumber(clock[2])
  now = seconds * 1000 + math.floor(micros / 1000)
  nowText = string.format('%d', now)
  nowMicros = seconds * 1000000 + micros
  reapBudget, reaped, liveCache, pathDeletes = 100, nil, nil, nil

  -- A namespace without an identity gets one now.
  local identity = redis.call('HMGET', K_ID, 'id', 'epoch', 'base')
  storeID, epoch, base = identity[1], tonumber(identity[2]), tonumber(identity[3])
  created = not storeID
  if created then
    -- The server's time to the microsecond makes it unique (math.random is seeded alike
    -- in every fresh Redis process; it only adds noise).
    storeID = string.format('%08x%05x%06x%05x', seconds % 4294967296, micros,
      math.random(0, 16777215), math.random(0, 1048575))
    epoch, base = nowMicros, current
    redis.call('HSET', K_ID, 'id', storeID, 'epoch', epoch, 'base', base, 'run', '', 'epochs', cmsgpack.pack({{base, epoch}}))
  end

  if #argv == 1 then return finish(run(argv[1])) end
  -- Several requests (a client's batch of concurrent requests): run one after another,
  -- each at revisions of its own exactly as if each had been a call of its own, and
  -- answered by an array of their replies. A request that fails with a Redis error (one
  -- call of its own would have ended with that error) gets it as its element; the
  -- others run regardless, since a script is not rolled back.
  local replies = {}
  for i = 1, #argv do
    local ok, reply = pcall(run, argv[i])
    if ok then
      replies[i] = reply
    else
      replies[i] = (type(reply) == 'table' and reply.err) and reply or {err = 'ERR ' .. tostring(reply)}
      -- A replica (after a failover) refuses every write of the batch, so nothing of it
      -- was written: answer the whole call with the error, as a lone call would be
      -- answered, so that the client sees it and follows the master.
      if string.find(replies[i].err, 'READONLY', 1, true) or string.find(replies[i].err, 'read only replica', 1, true) then
        return finish(replies[i])
      end
      -- What it wrote before failing stays (as after a call of its own): go on from there.
      current = tonumber(redis.call('GET', K_REV) or '1')
    end
  end
  return finish(replies)
end

-- Run by EVAL/EVALSHA, the chunk is the call. Loaded by FUNCTION LOAD (the client
-- prepends the library's "#!lua name=..." line and the LIBRARY local naming it), the
-- chunk runs once and registers main as the function of that name, called by FCALL
-- with the same KEYS and ARGV: the helpers above are then created once, not at every
-- call.
if redis.register_function then
  redis.register_function{function_name = LIBRARY, callback = main,
    description = 'the coordination store: one etcd v3 request, or a batch of them, per call (kv.lua)'}
else
  return main(KEYS, ARGV)
end
