-- compact.lua: one bounded step of compacting a namespace's history at a revision.
--
-- KEYS: 1 rev, 2 compact, 3 kv, 4 hkeys, 5 hist, 6 log (as kv.lua)
-- ARGV: 1 revision to compact at
--       2 cursor: "" to start (validates and records the compact revision), else the
--         last history member the previous step looked at
--       3 the most history members to look at in this step
-- Keeps, for every key, the newest version at or below the revision (unless it is a
-- deletion, or the live version is itself at or below the revision) and everything
-- newer; drops the rest. The first step records the compact revision, so reads below
-- it fail at once; the last step trims the event log below it.
-- Reply: {revision, nextCursor} (nextCursor "" when done) or {false, code, message}.

local K_REV, K_COMPACT, K_KV, K_HKEYS, K_HIST, K_LOG = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local at, cursor, budget = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local current = tonumber(redis.call('GET', K_REV) or '1')
local compacted = tonumber(redis.call('GET', K_COMPACT) or '0')

if cursor == '' then
  if at <= compacted then
    return {false, 'compacted', 'required revision ' .. at .. ' has been compacted; the store is already compacted at ' .. compacted}
  end
  if at > current then
    return {false, 'futureRevision', 'required revision ' .. at .. ' is a future revision; the current revision is ' .. current}
  end
  -- Over maxmemory Redis refuses a script's first write that can grow memory (SET),
  -- but not one after a write: a write that cannot grow it (HDEL of no field) comes
  -- first, so that compaction, which frees memory, goes on as etcd's does under its
  -- NOSPACE alarm.
  redis.call('HDEL', K_HIST, '')
  redis.call('SET', K_COMPACT, at)
end

local function hex(revision) return string.format('%016x', revision) end

local low = cursor == '' and '-' or ('(' .. cursor)
local members = redis.call('ZRANGEBYLEX', K_HKEYS, low, '+', 'LIMIT', 0, budget)
local newestAtOrBelow = {}
for _, member in ipairs(members) do
  local key = string.sub(member, 1, #member - 17)
  local revision = tonumber(string.sub(member, -16), 16)
  if revision <= at then
    local keep = newestAtOrBelow[key]
    if keep == nil then
      keep = false
      local live = redis.call('HGET', K_KV, key)
      local liveCovers = live and cmsgpack.unpack(live)[2] <= at
      if not liveCovers then
        -- Page past members of other keys that start with key.."\0".
        local offset, found = 0, false
        repeat
          local candidates = redis.call('ZREVRANGEBYLEX', K_HKEYS, '[' .. key .. '\0' .. hex(at), '[' .. key .. '\0', 'LIMIT', offset, 64)
          for _, candidate in ipairs(candidates) do
            if #candidate == #key + 17 then
              if cmsgpack.unpack(redis.call('HGET', K_HIST, candidate))[1] ~= 0 then keep = candidate end
              found = true
              break
            end
          end
          offset = offset + 64
        until found or #candidates < 64
      end
      newestAtOrBelow[key] = keep
    end
    if member ~= keep then
      redis.call('ZREM', K_HKEYS, member)
      redis.call('HDEL', K_HIST, member)
    end
  end
end

if #members < budget then
  redis.call('XTRIM', K_LOG, 'MINID', at)
  return {current, ''}
end
return {current, members[#members]}
