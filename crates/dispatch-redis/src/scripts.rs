//! The Lua scripts. Every step that reads the pending-entries list (PEL) and then acts
//! on it runs as one script, so Redis applies it atomically: nobody can claim an entry
//! between the ownership check and the XACK/XCLAIM.
//!
//! Key names are built inside the scripts from the prefix (they are not declared in
//! KEYS). That is fine on a single Redis; on a cluster, give the prefix a hash tag
//! (`{aob}`) so every key of one prefix lives in one slot.

use std::sync::LazyLock;

use redis::Script;

/// Shared helpers, prepended to every script. `p` is the key prefix, `g` the group.
const COMMON: &str = r#"
local p, g = ARGV[1], ARGV[2]
local function field(f, name)
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end
-- The lease token of one delivery: 64 bits of sha1(stream, entry, owner, delivery count).
local function token(stream, eid, owner, count)
  return string.sub(redis.sha1hex(stream .. '\n' .. eid .. '\n' .. owner .. '\n' .. tostring(count)), 1, 16)
end
-- Drops the dedupe key of envelope `id` if it still names this entry.
local function forget(q, eid, id)
  if not id then return end
  local k = p .. ':id:' .. id
  local v = redis.call('GET', k)
  if v then
    local ok, d = pcall(cjson.decode, v)
    if (not ok) or type(d) ~= 'table' or (d[1] == q and d[2] == eid) then
      redis.call('DEL', k)
    end
  end
end
"#;

/// Push. ARGV: prefix, group, max_len, key_ttl_ms, then (queue, id, payload) triples.
/// Returns how many entries were added.
const PUSH: &str = r#"
local maxlen, ttl = ARGV[3], tonumber(ARGV[4])
local added, seen = 0, {}
for i = 5, #ARGV, 3 do
  local q, id, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local s = p .. ':q:' .. q
  local k = p .. ':id:' .. id
  local live = false
  local v = redis.call('GET', k)
  if v then
    local ok, d = pcall(cjson.decode, v)
    if ok and type(d) == 'table' and d[1] and d[2] then
      -- Queued or leased means: the entry it names is still in its stream. An entry
      -- lost by Redis or trimmed by MAXLEN does not block a re-push.
      live = #redis.call('XRANGE', p .. ':q:' .. d[1], d[2], d[2]) > 0
    end
  end
  if not live then
    if not seen[q] then
      seen[q] = true
      redis.pcall('XGROUP', 'CREATE', s, g, '0', 'MKSTREAM')
      redis.call('SADD', p .. ':queues', q)
    end
    local eid = redis.call('XADD', s, 'MAXLEN', '~', maxlen, '*', 'id', id, 'payload', payload)
    redis.call('SET', k, cjson.encode({q, eid}), 'PX', ttl)
    added = added + 1
  end
end
if added > 0 then
  redis.call('PEXPIRE', p .. ':queues', ttl)
  redis.call('XADD', p .. ':bell', 'MAXLEN', '1', '*', 'n', tostring(added))
  redis.call('PEXPIRE', p .. ':bell', ttl)
end
return added
"#;

/// Pull. ARGV: prefix, group, consumer, visibility_ms, max_deliveries, want, key_ttl_ms,
/// dead_max_len, dead_ttl_ms, janitor_idle_ms (-1: no janitor pass), mode ('all' or
/// 'list'), then (queue, cursor) pairs: the queues to pull in 'list' mode, cursor hints
/// in both.
///
/// Per queue: reclaim expired leases (XAUTOCLAIM min-idle = visibility; an entry past
/// max_deliveries goes to the dead letters), then read new entries (XREADGROUP >).
/// Returns {cursors (queue, cursor)*, leases (queue, entry, id, payload, delivery, token)*,
/// wake-ups (stream, last id)*}; the wake-ups only when nothing was delivered.
const PULL: &str = r#"
local me = ARGV[3]
local vis, maxd, want = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ttl, deadmax, deadttl, jidle = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local mode = ARGV[11]
local cursors, queues = {}, {}
for i = 12, #ARGV, 2 do
  cursors[ARGV[i]] = ARGV[i + 1]
  if mode == 'list' then queues[#queues + 1] = ARGV[i] end
end
if mode == 'all' then
  queues = redis.call('SMEMBERS', p .. ':queues')
  table.sort(queues)
end
-- Keep the queue set alive while anyone pulls; refresh at half-life to spare the AOF.
if redis.call('PTTL', p .. ':queues') < ttl / 2 then
  redis.call('PEXPIRE', p .. ':queues', ttl)
end

local out = {}
local function deliver(s, q, eid, f, count)
  local id = field(f, 'id')
  if not id then
    -- Not an entry of ours: drop it rather than hand it out forever.
    redis.call('XACK', s, g, eid)
    redis.call('XDEL', s, eid)
    return false
  end
  local t = token(s, eid, me, count)
  redis.call('SET', p .. ':lease:' .. t, cjson.encode({q, eid, id}), 'PX', ttl)
  local k = p .. ':id:' .. id
  if redis.call('PEXPIRE', k, ttl) == 0 then
    redis.call('SET', k, cjson.encode({q, eid}), 'PX', ttl)
  end
  for _, v in ipairs({q, eid, id, field(f, 'payload') or 'null', tostring(count), t}) do
    out[#out + 1] = v
  end
  return true
end
local function bury(s, q, eid, f)
  local id = field(f, 'id') or ''
  redis.call('XADD', p .. ':dead', 'MAXLEN', '~', deadmax, '*', 'id', id, 'queue', q, 'payload', field(f, 'payload') or 'null')
  redis.call('PEXPIRE', p .. ':dead', deadttl)
  redis.call('XACK', s, g, eid)
  redis.call('XDEL', s, eid)
  forget(q, eid, id)
end
local function janitor(s)
  local cs = redis.call('XINFO', 'CONSUMERS', s, g)
  for _, c in ipairs(cs) do
    local name, pending, idle
    for i = 1, #c, 2 do
      if c[i] == 'name' then name = c[i + 1]
      elseif c[i] == 'pending' then pending = c[i + 1]
      elseif c[i] == 'idle' then idle = c[i + 1] end
    end
    -- A consumer with nothing pending owns nothing: deleting it loses nothing (a live
    -- one is re-created by its next read).
    if name and name ~= me and pending == 0 and idle and idle >= jidle then
      redis.call('XGROUP', 'DELCONSUMER', s, g, name)
    end
  end
end

local states, left = {}, want
for _, q in ipairs(queues) do
  local s = p .. ':q:' .. q
  redis.pcall('XGROUP', 'CREATE', s, g, '0', 'MKSTREAM')
  local cur = cursors[q] or '0-0'
  local rounds = 0
  while left > 0 and rounds < 4 do
    rounds = rounds + 1
    local r = redis.call('XAUTOCLAIM', s, g, me, vis, cur, 'COUNT', left)
    cur = r[1]
    for _, e in ipairs(r[2]) do
      local eid, f = e[1], e[2]
      if type(f) ~= 'table' then
        redis.call('XACK', s, g, eid)
      else
        local pe = redis.call('XPENDING', s, g, eid, eid, 1)
        local count = (pe[1] and tonumber(pe[1][4])) or 1
        if count > maxd then
          bury(s, q, eid, f)
        elseif deliver(s, q, eid, f, count) then
          left = left - 1
        end
      end
    end
    if cur == '0-0' then break end
  end
  states[#states + 1] = q
  states[#states + 1] = cur
  if left > 0 then
    local r = redis.call('XREADGROUP', 'GROUP', g, me, 'COUNT', left, 'STREAMS', s, '>')
    if r then
      for _, e in ipairs(r[1][2]) do
        if deliver(s, q, e[1], e[2], 1) then left = left - 1 end
      end
    end
  end
  if jidle >= 0 then janitor(s) end
end

local wake = {}
if #out == 0 then
  local streams = {}
  if mode == 'all' then
    streams = {p .. ':bell'}
  else
    for _, q in ipairs(queues) do streams[#streams + 1] = p .. ':q:' .. q end
  end
  for _, s in ipairs(streams) do
    local last = redis.call('XREVRANGE', s, '+', '-', 'COUNT', 1)
    wake[#wake + 1] = s
    wake[#wake + 1] = (last[1] and last[1][1]) or '0-0'
  end
end
return {states, out, wake}
"#;

/// Ack or extend. ARGV: prefix, group, token (16 hex), envelope id, op ('ack' or
/// 'extend'), key_ttl_ms. Returns 1 when the lease is still this token's, else 0.
const SETTLE: &str = r#"
local t, want_id, op, ttl = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local lk = p .. ':lease:' .. t
local v = redis.call('GET', lk)
if not v then return 0 end
local ok, l = pcall(cjson.decode, v)
if (not ok) or type(l) ~= 'table' or l[3] ~= want_id then return 0 end
local q, eid = l[1], l[2]
local s = p .. ':q:' .. q
local pe = redis.pcall('XPENDING', s, g, eid, eid, 1)
if type(pe) ~= 'table' or pe.err or not pe[1] then
  redis.call('DEL', lk)
  return 0
end
local owner, count = pe[1][2], pe[1][4]
-- The PEL row names the current delivery: its owner and count. A redelivery (to
-- anyone, this consumer included) raised the count, so an older token no longer matches.
if token(s, eid, owner, count) ~= t then
  redis.call('DEL', lk)
  return 0
end
if op == 'ack' then
  redis.call('XACK', s, g, eid)
  redis.call('XDEL', s, eid)
  redis.call('DEL', lk)
  forget(q, eid, want_id)
  return 1
end
-- Extend: the owner re-claims its own entry; JUSTID keeps the delivery count and resets
-- the idle time. An entry trimmed from the stream is dropped from the PEL instead.
local c = redis.call('XCLAIM', s, g, owner, 0, eid, 'JUSTID')
if #c == 0 then
  redis.call('DEL', lk)
  return 0
end
redis.call('PEXPIRE', lk, ttl)
redis.call('PEXPIRE', p .. ':id:' .. want_id, ttl)
return 1
"#;

/// Moves expired entries at max deliveries to the dead letters without claiming
/// anything else, then returns the dead letters (id, queue, payload)*, oldest first.
/// ARGV: prefix, group, visibility_ms, max_deliveries, dead_max_len, dead_ttl_ms.
const DEAD: &str = r#"
local vis, maxd, deadmax, deadttl = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local queues = redis.call('SMEMBERS', p .. ':queues')
table.sort(queues)
for _, q in ipairs(queues) do
  local s = p .. ':q:' .. q
  local pe = redis.pcall('XPENDING', s, g, 'IDLE', vis, '-', '+', 1000)
  if type(pe) == 'table' and not pe.err then
    for _, row in ipairs(pe) do
      local eid, count = row[1], tonumber(row[4])
      if count >= maxd then
        local e = redis.call('XRANGE', s, eid, eid)
        if e[1] then
          local f = e[1][2]
          local id = field(f, 'id') or ''
          redis.call('XADD', p .. ':dead', 'MAXLEN', '~', deadmax, '*', 'id', id, 'queue', q, 'payload', field(f, 'payload') or 'null')
          redis.call('PEXPIRE', p .. ':dead', deadttl)
          forget(q, eid, id)
        end
        redis.call('XACK', s, g, eid)
        redis.call('XDEL', s, eid)
      end
    end
  end
end
local out = {}
for _, e in ipairs(redis.call('XRANGE', p .. ':dead', '-', '+')) do
  local f = e[2]
  out[#out + 1] = field(f, 'id') or ''
  out[#out + 1] = field(f, 'queue') or ''
  out[#out + 1] = field(f, 'payload') or 'null'
end
return out
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}{body}"))
}

pub static PUSH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(PUSH));
pub static PULL_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(PULL));
pub static SETTLE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(SETTLE));
pub static DEAD_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(DEAD));
