-- session-sidecar's server-side library: every change to a session and its
-- indexes happens in one call of this script, atomically, on the upstream.
--
-- Call: EVALSHA <sha> <numkeys> <keys...> <op> <prefix> <now> <node> <stream-maxlen> <margin> <args...>
-- The keys are the ones the operation touches (declared for Redis), the
-- operation reads the rest of its arguments itself. Key layout (prefix P;
-- T is the hash tag {P:events}, so that every key, the events stream
-- included, lives in one hash slot and each call is atomic on a Redis
-- Cluster as on a single server):
--   T:s:<id>      hash    the session: id user conn status node created
--                         last_active expires ttl version, attributes as a:<name>
--   T:u:<user>    zset    the user's session ids, score = created (ms)
--   T:c:<conn>    string  the id of the session bound to the connection
--   T:x           zset    every session id, score = expires (ms): the expiry index
--   P:events      stream  lifecycle events (and the pub/sub channel of that name)
-- Every key carries a PEXPIREAT of its session's expiry plus a margin, so the
-- upstream cleans itself if every sidecar is gone.

local op = ARGV[1]
local P = ARGV[2]
local now = tonumber(ARGV[3])
local node = ARGV[4]
local maxlen = tonumber(ARGV[5])
local margin = tonumber(ARGV[6])
local argi = 7

local function arg()
  local v = ARGV[argi]
  argi = argi + 1
  return v
end

local events = P .. ':events'
local T = '{' .. events .. '}'
local function skey(id) return T .. ':s:' .. id end
local function ukey(user) return T .. ':u:' .. user end
local function ckey(conn) return T .. ':c:' .. conn end
local xkey = T .. ':x'

-- Every session this call changed or removed: the caller drops its copies
-- of them (its own writes send it no invalidations).
local touched = {}
local function done(result) return { result, touched } end

-- The session as a table of fields, or nil.
local function load(id)
  local flat = redis.call('HGETALL', skey(id))
  if #flat == 0 then return nil end
  local s = {}
  for i = 1, #flat, 2 do s[flat[i]] = flat[i + 1] end
  return s
end

local function live(s) return s ~= nil and tonumber(s.expires) > now end

local function publish(kind, id, s, reason)
  local fields = { 'event', kind, 'id', id }
  local node_of = s.node or ''
  local message = { event = kind, id = id, user = cjson.null, conn = cjson.null, node = node_of, at = now }
  if s.user then table.insert(fields, 'user'); table.insert(fields, s.user); message.user = s.user end
  if s.conn then table.insert(fields, 'conn'); table.insert(fields, s.conn); message.conn = s.conn end
  table.insert(fields, 'node'); table.insert(fields, node_of)
  table.insert(fields, 'at'); table.insert(fields, tostring(now))
  if reason then table.insert(fields, 'reason'); table.insert(fields, reason); message.reason = reason end
  redis.call('PUBLISH', events, cjson.encode(message))
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(fields))
end

-- Keeps a key alive at least until `at` + margin.
local function keep(key, at)
  local deadline = at + margin
  if redis.call('PTTL', key) == -1 then
    redis.call('PEXPIREAT', key, deadline)
  else
    redis.call('PEXPIREAT', key, deadline, 'GT')
  end
end

-- Removes a session and its index entries; publishes `kind` (deleted or expired).
local function remove(id, s, kind, reason)
  table.insert(touched, id)
  redis.call('DEL', skey(id))
  redis.call('ZREM', xkey, id)
  if s.user then redis.call('ZREM', ukey(s.user), id) end
  if s.conn and redis.call('GET', ckey(s.conn)) == id then redis.call('DEL', ckey(s.conn)) end
  publish(kind, id, s, reason)
end

-- Removes a session found dead (expired) if it is there: each expiry is
-- acted on, and published, once.
local function reap(id, s)
  if s ~= nil and not live(s) then remove(id, s, 'expired', nil) end
end

local function bump(id, s)
  table.insert(touched, id)
  s.version = tostring(tonumber(s.version) + 1)
  s.last_active = tostring(now)
  redis.call('HSET', skey(id), 'version', s.version, 'last_active', s.last_active)
end

local function set_expiry(id, s, expires)
  s.expires = tostring(expires)
  redis.call('HSET', skey(id), 'expires', s.expires)
  redis.call('ZADD', xkey, expires, id)
  keep(skey(id), expires)
  if s.user then keep(ukey(s.user), expires) end
  if s.conn then keep(ckey(s.conn), expires) end
end

-- Takes `conn` from whichever other session holds it.
local function take_conn(conn, id)
  local holder = redis.call('GET', ckey(conn))
  if holder and holder ~= id then
    local other = load(holder)
    if other and other.conn == conn then
      table.insert(touched, holder)
      redis.call('HDEL', skey(holder), 'conn')
      redis.call('HSET', skey(holder), 'status', 'disconnected')
      if live(other) then
        bump(holder, other)
        publish('unbound', holder, other, 'rebound')
      end
    end
  end
end

local function bind_conn(id, s, conn)
  take_conn(conn, id)
  if s.conn and s.conn ~= conn and redis.call('GET', ckey(s.conn)) == id then
    redis.call('DEL', ckey(s.conn))
  end
  s.conn = conn
  redis.call('HSET', skey(id), 'conn', conn)
  redis.call('SET', ckey(conn), id, 'PXAT', tonumber(s.expires) + margin)
end

local function must_load(id)
  local s = load(id)
  if not live(s) then
    reap(id, s)
    return nil
  end
  return s
end

-- The user's live sessions, oldest first, as { id, session } pairs; entries
-- of sessions that are gone, expired or no longer the user's are repaired
-- out of the index on the way (indexes never lie).
local function user_sessions(user)
  local sessions = {}
  for _, id in ipairs(redis.call('ZRANGE', ukey(user), 0, -1)) do
    local s = load(id)
    if live(s) and s.user == user then
      table.insert(sessions, { id, s })
    else
      reap(id, s)
      redis.call('ZREM', ukey(user), id)
    end
  end
  return sessions
end

local function nosession() return redis.error_reply('NOSESSION no such session') end

local function reply(id) return redis.call('HGETALL', skey(id)) end

local function attr_count(id)
  local n = 0
  for _, field in ipairs(redis.call('HKEYS', skey(id))) do
    if string.sub(field, 1, 2) == 'a:' then n = n + 1 end
  end
  return n
end

-- Creates one session, reading its arguments from ARGV at `argi`:
--   <created> <id> <user> <conn> <has_user> <has_conn> <ttl> <max_per_user>
--   <max_attrs> <fresh> <expires> <deadline> <event json> <nattrs> [<name> <value>]...
-- The sidecar passes every time as the string to store (no number formatting
-- here), the event's JSON, and whether it generated the id (a fresh UUID v4,
-- that no session can hold yet: no EXISTS check). Replies 1; the sidecar
-- knows the new session.
local function create_session()
  local stamp, id, user, conn = arg(), arg(), arg(), arg()
  local has_user, has_conn = arg() == '1', arg() == '1'
  local ttl, max_per_user, max_attrs = arg(), tonumber(arg()), tonumber(arg())
  local fresh, expires, deadline, json = arg() == '1', arg(), arg(), arg()
  local nattrs = tonumber(arg())
  local first_attr = argi
  argi = argi + 2 * nattrs
  local key = skey(id)
  if not fresh and redis.call('EXISTS', key) == 1 then
    local existing = load(id)
    if live(existing) then return redis.error_reply('EXISTS session already exists') end
    reap(id, existing)
  end
  local fields = { 'id', id, 'status', 'active', 'node', node, 'created', stamp,
    'last_active', stamp, 'expires', expires, 'ttl', ttl, 'version', '1' }
  local event = { 'event', 'created', 'id', id }
  local n, e = #fields, #event
  if has_user then
    fields[n + 1], fields[n + 2], n = 'user', user, n + 2
    event[e + 1], event[e + 2], e = 'user', user, e + 2
  end
  if has_conn then
    fields[n + 1], fields[n + 2], n = 'conn', conn, n + 2
    event[e + 1], event[e + 2], e = 'conn', conn, e + 2
  end
  event[e + 1], event[e + 2], event[e + 3], event[e + 4] = 'node', node, 'at', stamp
  local names, attrs = {}, 0
  for i = first_attr, first_attr + 2 * nattrs - 1, 2 do
    local name = 'a:' .. ARGV[i]
    if not names[name] then attrs = attrs + 1; names[name] = true end
    fields[n + 1], fields[n + 2], n = name, ARGV[i + 1], n + 2
  end
  if attrs > max_attrs then return redis.error_reply('ERR too many attributes (max ' .. max_attrs .. ')') end
  if has_user and max_per_user > 0 then
    local alive = user_sessions(user)
    for i = 1, #alive + 1 - max_per_user do
      remove(alive[i][1], alive[i][2], 'deleted', 'evicted')
    end
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('PEXPIREAT', key, deadline)
  redis.call('ZADD', xkey, expires, id)
  if has_user then
    local index = ukey(user)
    redis.call('ZADD', index, stamp, id)
    -- A new user's index has no expiry yet; an existing one's only grows.
    if redis.call('PEXPIREAT', index, deadline, 'NX') == 0 then
      redis.call('PEXPIREAT', index, deadline, 'GT')
    end
  end
  if has_conn then
    take_conn(conn, id)
    redis.call('SET', ckey(conn), id, 'PXAT', deadline)
  end
  redis.call('PUBLISH', events, json)
  redis.call('XADD', events, 'MAXLEN', '~', ARGV[5], '*', unpack(event))
  return 1
end

if op == 'create' then
  -- <count> creations (group commit: the sidecar sends together those that
  -- arrive while earlier calls are in flight), each applied in turn. Replies
  -- one entry each: { 1, touched } (the other sessions it changed), or its
  -- error. A creation that fails does not stop the others, so each entry is
  -- exactly what happened to that session.
  local results = {}
  for i = 1, tonumber(arg()) do
    touched = {}
    local start = argi
    local ok, result = pcall(create_session)
    if not ok then
      -- A failed redis.call raises the upstream's error text (with its code).
      result = tostring(result)
      result = redis.error_reply(string.match(result, '^%u+ ') and result or 'ERR ' .. result)
    end
    -- Past this creation's arguments, whatever happened to it.
    argi = start + 14 + 2 * tonumber(ARGV[start + 13])
    results[i] = result == 1 and done(1) or result
  end
  return results

elseif op == 'attr_set' then
  local id, max_attrs = arg(), tonumber(arg())
  local s = must_load(id)
  if not s then return nosession() end
  local fields = {}
  while argi <= #ARGV do
    table.insert(fields, 'a:' .. arg())
    table.insert(fields, arg())
  end
  local before = redis.call('HMGET', skey(id), unpack(fields))
  redis.call('HSET', skey(id), unpack(fields))
  if attr_count(id) > max_attrs then
    -- Put back what was there: a refused write changes nothing.
    for i = 1, #fields, 2 do
      local old = before[(i + 1) / 2]
      if old then redis.call('HSET', skey(id), fields[i], old) else redis.call('HDEL', skey(id), fields[i]) end
    end
    return redis.error_reply('ERR too many attributes (max ' .. max_attrs .. ')')
  end
  bump(id, s)
  return done(reply(id))

elseif op == 'attr_del' then
  local id = arg()
  local s = must_load(id)
  if not s then return done({ 0, false }) end
  local fields = {}
  while argi <= #ARGV do table.insert(fields, 'a:' .. arg()) end
  local removed = redis.call('HDEL', skey(id), unpack(fields))
  if removed > 0 then bump(id, s) end
  return done({ removed, reply(id) })

elseif op == 'attr_incrby' then
  -- The increment stays a string: Lua numbers are doubles, exact only to 2^53.
  local id, name, increment, max_attrs = arg(), arg(), arg(), tonumber(arg())
  local s = must_load(id)
  if not s then return nosession() end
  local current = redis.call('HGET', skey(id), 'a:' .. name)
  if not current and attr_count(id) >= max_attrs then
    return redis.error_reply('ERR too many attributes (max ' .. max_attrs .. ')')
  end
  if current and not string.match(current, '^%-?%d+$') then
    return redis.error_reply('ERR attribute value is not an integer or out of range')
  end
  local ok, failure = pcall(redis.call, 'HINCRBY', skey(id), 'a:' .. name, increment)
  if not ok then
    if string.find(tostring(failure.err or failure), 'overflow') then
      return redis.error_reply('ERR increment or decrement would overflow')
    end
    return redis.error_reply('ERR attribute value is not an integer or out of range')
  end
  bump(id, s)
  -- The new value as Redis stores it (a string, exact).
  return done({ redis.call('HGET', skey(id), 'a:' .. name), reply(id) })

elseif op == 'update' then
  local id, if_version, user, conn, status, ttl = arg(), arg(), arg(), arg(), arg(), arg()
  local has_user, has_conn = arg() == '1', arg() == '1'
  local max_attrs, nsets = tonumber(arg()), tonumber(arg())
  local s = must_load(id)
  if not s then return nosession() end
  if if_version ~= '' and if_version ~= s.version then
    return redis.error_reply('CONFLICT version is ' .. s.version)
  end
  local sets = {}
  for _ = 1, nsets do
    table.insert(sets, 'a:' .. arg())
    table.insert(sets, arg())
  end
  local dels = {}
  while argi <= #ARGV do table.insert(dels, 'a:' .. arg()) end
  -- The attribute limit is checked before anything changes.
  local names = {}
  for _, field in ipairs(redis.call('HKEYS', skey(id))) do
    if string.sub(field, 1, 2) == 'a:' then names[field] = true end
  end
  for i = 1, #sets, 2 do names[sets[i]] = true end
  for _, field in ipairs(dels) do names[field] = nil end
  local n = 0
  for _ in pairs(names) do n = n + 1 end
  if n > max_attrs then return redis.error_reply('ERR too many attributes (max ' .. max_attrs .. ')') end
  if #sets > 0 then redis.call('HSET', skey(id), unpack(sets)) end
  if #dels > 0 then redis.call('HDEL', skey(id), unpack(dels)) end
  if status ~= '' then
    s.status = status
    redis.call('HSET', skey(id), 'status', status)
  end
  if has_user then
    if s.user then redis.call('ZREM', ukey(s.user), id) end
    s.user = user
    redis.call('HSET', skey(id), 'user', user)
    redis.call('ZADD', ukey(user), tonumber(s.created), id)
  end
  if ttl ~= '' then
    redis.call('HSET', skey(id), 'ttl', ttl)
    s.ttl = ttl
    set_expiry(id, s, now + tonumber(ttl))
  else
    set_expiry(id, s, tonumber(s.expires))
  end
  if has_conn then
    bind_conn(id, s, conn)
    s.node = node
    redis.call('HSET', skey(id), 'node', node)
    if status == '' then redis.call('HSET', skey(id), 'status', 'active'); s.status = 'active' end
  end
  bump(id, s)
  if has_conn then publish('bound', id, s, nil) end
  return done(reply(id))

elseif op == 'touch' then
  -- The heartbeat that may extend: slides the expiry only when less than
  -- half the ttl remains; otherwise only last_active moves.
  local id = arg()
  local s = must_load(id)
  if not s then return done(false) end
  local left, ttl = tonumber(s.expires) - now, tonumber(s.ttl)
  if left * 2 < ttl then
    set_expiry(id, s, now + ttl)
    bump(id, s)
  elseif tonumber(s.last_active) < now then
    redis.call('HSET', skey(id), 'last_active', now)
  end
  return done(reply(id))

elseif op == 'expire' then
  local id, ttl = arg(), tonumber(arg())
  local s = must_load(id)
  if not s then return done(false) end
  redis.call('HSET', skey(id), 'ttl', ttl)
  set_expiry(id, s, now + ttl)
  bump(id, s)
  return done(reply(id))

elseif op == 'delete' then
  local reason = arg()
  if reason == '' then reason = nil end
  local deleted = 0
  while argi <= #ARGV do
    local id = arg()
    local s = load(id)
    if live(s) then
      remove(id, s, 'deleted', reason)
      deleted = deleted + 1
    else
      reap(id, s)
    end
  end
  return done(deleted)

elseif op == 'killuser' then
  local user = arg()
  local sessions = user_sessions(user)
  for _, pair in ipairs(sessions) do
    remove(pair[1], pair[2], 'deleted', 'killuser')
  end
  return done(#sessions)

elseif op == 'bind' then
  local id, conn = arg(), arg()
  local s = must_load(id)
  if not s then return nosession() end
  bind_conn(id, s, conn)
  s.status, s.node = 'active', node
  redis.call('HSET', skey(id), 'status', 'active', 'node', node)
  set_expiry(id, s, now + tonumber(s.ttl))
  bump(id, s)
  publish('bound', id, s, nil)
  return done(reply(id))

elseif op == 'unbind' then
  local id, grace = arg(), arg()
  local s = must_load(id)
  if not s then return nosession() end
  publish('unbound', id, s, nil)
  if s.conn and redis.call('GET', ckey(s.conn)) == id then redis.call('DEL', ckey(s.conn)) end
  s.conn = nil
  redis.call('HDEL', skey(id), 'conn')
  redis.call('HSET', skey(id), 'status', 'disconnected')
  if grace ~= '' then
    set_expiry(id, s, math.min(tonumber(s.expires), now + tonumber(grace)))
  end
  bump(id, s)
  return done(reply(id))

elseif op == 'byconn' then
  -- Never shows a dead or moved binding; repairs one it finds.
  local conn = arg()
  local id = redis.call('GET', ckey(conn))
  if not id then return done(false) end
  local s = load(id)
  if live(s) and s.conn == conn then return done(id) end
  reap(id, s)
  if redis.call('GET', ckey(conn)) == id then redis.call('DEL', ckey(conn)) end
  return done(false)

elseif op == 'byuser' then
  local user = arg()
  local ids = {}
  for _, pair in ipairs(user_sessions(user)) do table.insert(ids, pair[1]) end
  return done(ids)

elseif op == 'count' then
  return done(redis.call('ZCOUNT', xkey, '(' .. now, '+inf'))

elseif op == 'sweep' then
  -- Claims what is due and removes it, publishing one `expired` event each:
  -- atomic, so across all sidecars each expiry is acted on once.
  local limit = tonumber(arg())
  local due = redis.call('ZRANGEBYSCORE', xkey, '-inf', now, 'LIMIT', 0, limit)
  local expired = 0
  for _, id in ipairs(due) do
    local s = load(id)
    if s == nil then
      -- The key expired by itself (every sidecar was gone past the margin).
      redis.call('ZREM', xkey, id)
    elseif live(s) then
      redis.call('ZADD', xkey, tonumber(s.expires), id)
    else
      remove(id, s, 'expired', nil)
      expired = expired + 1
    end
  end
  return done(expired)

elseif op == 'audit' then
  -- Walks the expiry index a page at a time and drops entries whose session
  -- hash is gone (deleted behind the sidecars' back), so COUNT converges.
  local cursor, page = arg(), arg()
  local scanned = redis.call('ZSCAN', xkey, cursor, 'COUNT', page)
  local members = scanned[2]
  local repaired = 0
  for i = 1, #members, 2 do
    if redis.call('EXISTS', skey(members[i])) == 0 then
      redis.call('ZREM', xkey, members[i])
      repaired = repaired + 1
    end
  end
  return done({ scanned[1], repaired })

elseif op == 'owned' then
  -- A page of the expiry index (every session), keeping the live sessions
  -- owned by the calling sidecar: how a drain finds those it does not hold hot.
  local cursor, page = arg(), arg()
  local scanned = redis.call('ZSCAN', xkey, cursor, 'COUNT', page)
  local members = scanned[2]
  local owned = {}
  for i = 1, #members, 2 do
    if tonumber(members[i + 1]) > now and redis.call('HGET', skey(members[i]), 'node') == node then
      table.insert(owned, members[i])
    end
  end
  return done({ scanned[1], owned })

elseif op == 'migrate' then
  -- Hands sessions to the calling sidecar (`node`), as SESSION.IMPORT does on
  -- the sidecar taking them: each one that is live, still owned by `from` and
  -- still at the version the sender copied moves (node changed, version + 1,
  -- a `migrated` event); the reply has its new state, or false when it did
  -- not move (changed meanwhile, gone, or not the sender's).
  local from = arg()
  local results = {}
  while argi <= #ARGV do
    local id, version = arg(), arg()
    local s = must_load(id)
    if s and s.node == node then
      -- Already ours: a batch sent again after its reply was lost.
      table.insert(results, reply(id))
    elseif s and s.version == version and s.node == from then
      s.node = node
      redis.call('HSET', skey(id), 'node', node)
      bump(id, s)
      publish('migrated', id, s, nil)
      table.insert(results, reply(id))
    else
      table.insert(results, false)
    end
  end
  return done(results)

elseif op == 'heartbeat' then
  -- Batched last_active of heartbeats answered from memory: never moves it back.
  while argi <= #ARGV do
    local id, at = arg(), arg()
    local current = redis.call('HGET', skey(id), 'last_active')
    if current and tonumber(current) < tonumber(at) then
      redis.call('HSET', skey(id), 'last_active', at)
    end
  end
  return done(1)
end

return redis.error_reply('ERR unknown session-sidecar script operation ' .. tostring(op))
