-- session-sidecar's server-side library (a Redis Function library): every
-- change to a shard's keys happens in one call of it, atomically, on the
-- master of the shard's hash slot. The sidecar loads it with FUNCTION LOAD,
-- named session_sidecar_<hash of this source> (SESSION_SIDECAR_FUNCTION
-- below becomes that name), so that sidecars of different versions on one
-- upstream each call their own.
--
-- Call: FCALL <name> <numkeys> <keys...> <op> <prefix> <now> <node> <stream-maxlen> <margin> <tag> <args...>
-- The keys declared are those the operation is routed by (all in the shard's
-- slot); the operation reads the rest of its arguments itself. Key layout
-- (prefix P, {t} the shard's hash tag, given as <tag>; see layout.rs):
--   P:s:{t}:<id>    hash    the session: id user conn status node created
--                           last_active expires ttl version, attributes as a:<name>
--   P:u:{t}:<user>  zset    the user's session ids, in creation order
--   P:c:{t}:<conn>  string  the id of the session bound to the connection
--   P:x:{t}         zset    the shard's session ids by expiry (ms): its expiry index
--   P:e:{t}         stream  the shard's lifecycle events
--   P:i:{t}         zset    intents: cross-shard work to finish, by when to repair it
--   P:events        channel every lifecycle event (PUBLISH reaches every node)
--
-- A session lives in the shard of its id; its user's index in the shard of
-- the user, its connection's pointer in the shard of the conn. When those
-- differ, one call cannot change them all: the call that changes the session
-- records an intent in its own shard (atomically with the change), the
-- sidecar makes the other shards' changes in following calls, and a repairer
-- finishes any intent left behind (a sidecar killed between the calls).
-- Intents are strings `<kind> <len>:<field> <len>:<field>...`.
--
-- Within a shard, a user index entry whose session key exists here is the
-- shard's own, checked and repaired here; one whose key does not exist here
-- is another shard's (or dangling), counted as live, and checked by the
-- sidecar.
--
-- Every key carries a PEXPIREAT of its session's expiry plus a margin, so the
-- upstream cleans itself if every sidecar is gone.

-- The call's arguments and header, set at each call (see the entry point
-- at the end): the library is loaded once, its functions defined once.
local ARGV, op, P, now, node, maxlen, margin, T
-- The next argument to read, and the last one of the operation being
-- applied (a `multi` entry's).
local argi, argn

local function arg()
  local v = ARGV[argi]
  argi = argi + 1
  return v
end

local channel
local function skey(id) return P .. ':s:' .. T .. ':' .. id end
local function ukey(user) return P .. ':u:' .. T .. ':' .. user end
local function ckey(conn) return P .. ':c:' .. T .. ':' .. conn end
local xkey, ekey, ikey
-- The shard being changed, by its hash tag: a `multi` call changes several.
local function use_tag(tag)
  T = tag
  xkey, ekey, ikey = P .. ':x:' .. T, P .. ':e:' .. T, P .. ':i:' .. T
end

-- Every session this call changed or removed: the caller drops its copies
-- of them (its own writes send it no invalidations).
local touched
-- Sessions MAXPERUSER evicted in this shard (a create's reply counts them).
local evictions
local function done(result) return { result, touched } end

-- Expiry index entries of this call's creations not added yet, { score,
-- id, ... }: one ZADD adds them when the creations are done
-- (`add_expiring`), and a session removed meanwhile leaves it.
local expiring = {}

-- Cross-shard work the caller must do next: { kind, fields... } each.
local followups

local function encode(kind, ...)
  local parts = { kind }
  for _, field in ipairs({ ... }) do
    table.insert(parts, #field .. ':' .. field)
  end
  return table.concat(parts, ' ')
end

-- Records an intent in this shard, to be repaired from `repair_at` (ms) on
-- unless the sidecar finishes it first; returns it.
local function intend(repair_at, kind, ...)
  local intent = encode(kind, ...)
  redis.call('ZADD', ikey, repair_at, intent)
  table.insert(followups, intent)
  return intent
end

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
  local at = now
  local fields = { 'event', kind, 'id', id }
  local node_of = s.node or ''
  if s.user then table.insert(fields, 'user'); table.insert(fields, s.user) end
  if s.conn then table.insert(fields, 'conn'); table.insert(fields, s.conn) end
  table.insert(fields, 'node'); table.insert(fields, node_of)
  table.insert(fields, 'at'); table.insert(fields, tostring(at))
  if reason then table.insert(fields, 'reason'); table.insert(fields, reason) end
  -- The JSON message with the fields in the same order as the sidecar's own
  -- (standalone) events: event, id, user, conn, node, at, reason.
  local json = '{"event":' .. cjson.encode(kind) .. ',"id":' .. cjson.encode(id)
    .. ',"user":' .. (s.user and cjson.encode(s.user) or 'null')
    .. ',"conn":' .. (s.conn and cjson.encode(s.conn) or 'null')
    .. ',"node":' .. cjson.encode(node_of) .. ',"at":' .. at
  if reason then json = json .. ',"reason":' .. cjson.encode(reason) end
  redis.call('PUBLISH', channel, json .. '}')
  redis.call('XADD', ekey, 'MAXLEN', '~', maxlen, '*', unpack(fields))
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

-- Whether the user's index lives in this shard: the caller says.
local function user_here(flag) return flag == '1' end

-- Removes a session and its index entries in this shard; publishes `kind`
-- (deleted or expired). Entries in other shards are the caller's (the
-- session's user and conn go back in `followups` as `gone`).
local function remove(id, s, kind, reason, user_local)
  table.insert(touched, id)
  redis.call('DEL', skey(id))
  redis.call('ZREM', xkey, id)
  for i = 2, #expiring, 2 do
    if expiring[i] == id then
      table.remove(expiring, i)
      table.remove(expiring, i - 1)
      break
    end
  end
  if s.user then
    if redis.call('ZREM', ukey(s.user), id) == 0 and not user_local then
      table.insert(followups, encode('gone', id, s.user, s.conn or ''))
    end
  end
  if s.conn and redis.call('GET', ckey(s.conn)) == id then redis.call('DEL', ckey(s.conn)) end
  publish(kind, id, s, reason)
end

-- Removes a session found dead (expired) if it is there: each expiry is
-- acted on, and published, once.
local function reap(id, s)
  if s ~= nil and not live(s) then remove(id, s, 'expired', nil, false) end
end

local function bump(id, s)
  table.insert(touched, id)
  s.version = tostring(tonumber(s.version) + 1)
  s.last_active = tostring(now)
  redis.call('HSET', skey(id), 'version', s.version, 'last_active', s.last_active)
end

-- A new expiry; the user's index and the conn's pointer, where they are in
-- this shard, are kept alive with it (elsewhere: `keep` follow-ups).
local function set_expiry(id, s, expires)
  s.expires = tostring(expires)
  redis.call('HSET', skey(id), 'expires', s.expires)
  redis.call('ZADD', xkey, expires, id)
  keep(skey(id), expires)
  if s.user and redis.call('EXISTS', ukey(s.user)) == 1 then keep(ukey(s.user), expires) end
  if s.conn and redis.call('GET', ckey(s.conn)) == id then keep(ckey(s.conn), expires) end
  table.insert(followups, encode('keep', id, s.user or '', s.conn or '', s.expires))
end

local function must_load(id)
  local s = load(id)
  if not live(s) then
    reap(id, s)
    return nil
  end
  return s
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

-- The user's index, oldest first, as { id, session-or-false } pairs: a
-- session of this shard is checked (gone, expired or no longer the user's:
-- repaired out of the index on the way); `false` marks another shard's.
local function user_entries(user)
  local entries = {}
  for _, id in ipairs(redis.call('ZRANGE', ukey(user), 0, -1)) do
    if redis.call('EXISTS', skey(id)) == 1 then
      local s = load(id)
      if live(s) and s.user == user then
        table.insert(entries, { id, s })
      else
        reap(id, s)
        redis.call('ZREM', ukey(user), id)
      end
    else
      table.insert(entries, { id, false })
    end
  end
  return entries
end

-- Adds `id` to the user's index (in this shard) in creation order, then
-- keeps at most `max_per_user` entries: the oldest go, removed here when
-- they are this shard's sessions, handed back as `evict` intents otherwise.
-- Scores order the index by creation: ms * 4096 plus a sequence number
-- below (exact in a double until the year 2500). A creation passes its
-- `order` (the creating sidecar numbers its creations, see store.rs); a
-- cross-shard addition passes only `created` (ms), and takes the first
-- score of that ms that no session holds yet.
local function user_add(user, id, deadline, max_per_user, created, order)
  local index = ukey(user)
  if not order then
    order = created * 4096
    while redis.call('ZCOUNT', index, order, order) > 0 do order = order + 1 end
  end
  -- NX: a session already there keeps its place.
  redis.call('ZADD', index, 'NX', order, id)
  -- A new user's index has no expiry yet; an existing one's only grows
  -- (GT first: an existing index is the common case, one call).
  if redis.call('PEXPIREAT', index, deadline, 'GT') == 0 then
    redis.call('PEXPIREAT', index, deadline, 'NX')
  end
  if max_per_user > 0 then
    -- The new session stays; the oldest of the others go.
    local others = {}
    for _, entry in ipairs(user_entries(user)) do
      if entry[1] ~= id then table.insert(others, entry) end
    end
    for i = 1, #others + 1 - max_per_user do
      local other, s = others[i][1], others[i][2]
      if s then
        remove(other, s, 'deleted', 'evicted', true)
        evictions = evictions + 1
      else
        redis.call('ZREM', index, other)
        intend(now + 5000, 'evict', other, user)
      end
    end
  end
end

-- Session `id` (of this shard) loses `conn` to another session, if it
-- still has it: its version moves and an `unbound` event says why.
-- Returns whether it had it.
local function lose_conn(id, s, conn)
  if not s or s.conn ~= conn then return false end
  table.insert(touched, id)
  redis.call('HDEL', skey(id), 'conn')
  redis.call('HSET', skey(id), 'status', 'disconnected')
  if live(s) then
    bump(id, s)
    publish('unbound', id, s, 'rebound')
  end
  return true
end

-- The conn's pointer (in this shard) now names `id`. A previous holder
-- loses the conn: here if it is this shard's session, else by an intent.
local function point(conn, id, deadline, repair_at)
  local previous = redis.call('SET', ckey(conn), id, 'PXAT', deadline, 'GET')
  if previous and previous ~= id then
    if redis.call('EXISTS', skey(previous)) == 1 then
      lose_conn(previous, load(previous), conn)
    else
      intend(repair_at, 'unbind', previous, conn)
    end
  end
  return previous
end

-- Binds `conn` to the session in this shard: its field, and the pointer
-- here when the conn's shard is this one (`conn_here`), else in the conn's
-- shard next (an intent until then).
local function bind_conn(id, s, conn, conn_here, repair_at)
  s.conn = conn
  redis.call('HSET', skey(id), 'conn', conn)
  if conn_here then
    point(conn, id, tonumber(s.expires) + margin, repair_at)
  else
    intend(repair_at, 'conn', id, conn)
  end
end

local function add_expiring()
  if #expiring > 0 then
    redis.call('ZADD', xkey, unpack(expiring))
    expiring = {}
  end
end

-- Creates one session, reading its arguments from ARGV at `argi`:
--   <created> <order> <id> <user> <conn> <has_user> <has_conn> <ttl> <max_per_user>
--   <max_attrs> <fresh> <expires> <deadline> <user_here> <conn_here> <repair_at>
--   <event json> <nattrs> [<name> <value>]...
-- The sidecar passes every time as the string to store (no number formatting
-- here), the event's JSON, and whether it generated the id (a fresh UUID v4, that no session
-- can hold yet: no EXISTS check). Replies 1; the sidecar knows the new
-- session.
local function create_session()
  local stamp, order, id, user, conn = arg(), arg(), arg(), arg(), arg()
  local has_user, has_conn = arg() == '1', arg() == '1'
  local ttl, max_per_user, max_attrs = arg(), tonumber(arg()), tonumber(arg())
  local fresh, expires, deadline = arg() == '1', arg(), arg()
  local local_user, local_conn, repair_at, json = user_here(arg()), arg() == '1', arg(), arg()
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
  local n = #fields
  if has_user then fields[n + 1], fields[n + 2], n = 'user', user, n + 2 end
  if has_conn then fields[n + 1], fields[n + 2], n = 'conn', conn, n + 2 end
  local names, attrs = {}, 0
  for i = first_attr, first_attr + 2 * nattrs - 1, 2 do
    local name = 'a:' .. ARGV[i]
    if not names[name] then attrs = attrs + 1; names[name] = true end
    fields[n + 1], fields[n + 2], n = name, ARGV[i + 1], n + 2
  end
  if attrs > max_attrs then return redis.error_reply('ERR too many attributes (max ' .. max_attrs .. ')') end
  -- The user's index first: an error there (a key of the wrong type) must
  -- leave nothing behind, and Redis does not undo a script's earlier writes.
  if has_user then
    if local_user then
      user_add(user, id, tonumber(deadline), max_per_user, tonumber(stamp), order)
    else
      intend(repair_at, 'uadd', id, user, tostring(max_per_user), stamp)
    end
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('PEXPIREAT', key, deadline)
  expiring[#expiring + 1] = expires
  expiring[#expiring + 1] = id
  if has_conn then
    if local_conn then
      point(conn, id, tonumber(deadline), repair_at)
    else
      intend(repair_at, 'conn', id, conn)
    end
  end
  local event = { 'event', 'created', 'id', id }
  if has_user then table.insert(event, 'user'); table.insert(event, user) end
  if has_conn then table.insert(event, 'conn'); table.insert(event, conn) end
  table.insert(event, 'node'); table.insert(event, node)
  table.insert(event, 'at'); table.insert(event, stamp)
  redis.call('PUBLISH', channel, json)
  redis.call('XADD', ekey, 'MAXLEN', '~', maxlen, '*', unpack(event))
  return 1 + evictions
end

-- The operations, by name. Each replies { result, touched, followups } or
-- an error.
local ops = {}
local function finish(result) return { result, touched, followups } end

-- A failed redis.call raises the upstream's error text (with its code):
-- the error reply Redis would have given.
local function raised(failure)
  local text = tostring(type(failure) == 'table' and failure.err or failure)
  return redis.error_reply(string.match(text, '^%u+ ') and text or 'ERR ' .. text)
end

ops.create = function()
  -- <count> creations (group commit: the sidecar sends together those of
  -- one shard that arrive while earlier calls are in flight), each applied
  -- in turn. Replies one entry each: { 1 + sessions evicted here, touched,
  -- followups }, or its error. A creation that fails does not stop the
  -- others, so each entry is exactly what happened to that session.
  local results = {}
  for i = 1, tonumber(arg()) do
    touched, followups, evictions = {}, {}, 0
    local start = argi
    local ok, result = pcall(create_session)
    if not ok then result = raised(result) end
    -- Past this creation's arguments, whatever happened to it.
    argi = start + 18 + 2 * tonumber(ARGV[start + 17])
    results[i] = type(result) == 'number' and { result, touched, followups } or result
  end
  add_expiring()
  return results
end

ops.attr_set = function()
  local id, max_attrs = arg(), tonumber(arg())
  local s = must_load(id)
  if not s then return nosession() end
  local fields = {}
  while argi <= argn do
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
  return finish(reply(id))
end

ops.attr_del = function()
  local id = arg()
  local s = must_load(id)
  if not s then return finish({ 0, false }) end
  local fields = {}
  while argi <= argn do table.insert(fields, 'a:' .. arg()) end
  local removed = redis.call('HDEL', skey(id), unpack(fields))
  if removed > 0 then bump(id, s) end
  return finish({ removed, reply(id) })
end

ops.attr_incrby = function()
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
  return finish({ redis.call('HGET', skey(id), 'a:' .. name), reply(id) })
end

ops.update = function()
  local id, if_version, user, conn, status, ttl = arg(), arg(), arg(), arg(), arg(), arg()
  local has_user, has_conn = arg() == '1', arg() == '1'
  local new_user_here, conn_here, repair_at = arg() == '1', arg() == '1', arg()
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
  while argi <= argn do table.insert(dels, 'a:' .. arg()) end
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
  if has_user and s.user ~= user then
    -- The old user's index: here, or tidied in its own shard.
    if s.user and redis.call('ZREM', ukey(s.user), id) == 0 then
      table.insert(followups, encode('gone', id, s.user, ''))
    end
    s.user = user
    redis.call('HSET', skey(id), 'user', user)
    if new_user_here then
      user_add(user, id, tonumber(s.expires) + margin, 0, tonumber(s.created))
    else
      intend(repair_at, 'uadd', id, user, '0', s.created)
    end
  end
  if ttl ~= '' then
    redis.call('HSET', skey(id), 'ttl', ttl)
    s.ttl = ttl
    set_expiry(id, s, now + tonumber(ttl))
  end
  if has_conn then
    bind_conn(id, s, conn, conn_here, repair_at)
    s.node = node
    redis.call('HSET', skey(id), 'node', node)
    if status == '' then redis.call('HSET', skey(id), 'status', 'active'); s.status = 'active' end
  end
  bump(id, s)
  if has_conn then publish('bound', id, s, nil) end
  return finish(reply(id))
end

ops.touch = function()
  -- The heartbeat that may extend: slides the expiry only when less than
  -- half the ttl remains; otherwise only last_active moves.
  local id = arg()
  local s = must_load(id)
  if not s then return finish(false) end
  local left, ttl = tonumber(s.expires) - now, tonumber(s.ttl)
  if left * 2 < ttl then
    set_expiry(id, s, now + ttl)
    bump(id, s)
  elseif tonumber(s.last_active) < now then
    redis.call('HSET', skey(id), 'last_active', now)
  end
  return finish(reply(id))
end

ops.expire = function()
  local id, ttl = arg(), tonumber(arg())
  local s = must_load(id)
  if not s then return finish(false) end
  redis.call('HSET', skey(id), 'ttl', ttl)
  set_expiry(id, s, now + ttl)
  bump(id, s)
  return finish(reply(id))
end

ops.delete = function()
  -- <reason> <user> then ids; `user` (may be empty): delete only the
  -- sessions that are still that user's (evictions, KILLUSER elsewhere).
  local reason, only_user = arg(), arg()
  if reason == '' then reason = nil end
  local deleted = 0
  while argi <= argn do
    local id = arg()
    local s = load(id)
    if live(s) and (only_user == '' or s.user == only_user) then
      remove(id, s, 'deleted', reason, false)
      deleted = deleted + 1
    else
      reap(id, s)
    end
  end
  return finish(deleted)
end

ops.killuser = function()
  -- The user's index is here: this shard's sessions go now; the others'
  -- ids are handed back, for deletion in their shards.
  -- Those leave the index now, each with an intent: a sidecar killed
  -- before deleting them leaves them to the repairer.
  local user = arg()
  local deleted, elsewhere = 0, {}
  for _, entry in ipairs(user_entries(user)) do
    if entry[2] then
      remove(entry[1], entry[2], 'deleted', 'killuser', true)
      deleted = deleted + 1
    else
      table.insert(elsewhere, entry[1])
      redis.call('ZREM', ukey(user), entry[1])
      intend(now + 3000, 'evict', entry[1], user, 'killuser')
    end
  end
  return finish({ deleted, elsewhere })
end

ops.bind = function()
  local id, conn, conn_here, repair_at = arg(), arg(), arg() == '1', arg()
  local s = must_load(id)
  if not s then return nosession() end
  bind_conn(id, s, conn, conn_here, repair_at)
  s.status, s.node = 'active', node
  redis.call('HSET', skey(id), 'status', 'active', 'node', node)
  set_expiry(id, s, now + tonumber(s.ttl))
  bump(id, s)
  publish('bound', id, s, nil)
  return finish(reply(id))
end

ops.unbind = function()
  local id, grace = arg(), arg()
  local s = must_load(id)
  if not s then return nosession() end
  publish('unbound', id, s, nil)
  if s.conn then
    if redis.call('GET', ckey(s.conn)) == id then redis.call('DEL', ckey(s.conn)) end
    table.insert(followups, encode('unpoint', id, s.conn))
  end
  s.conn = nil
  redis.call('HDEL', skey(id), 'conn')
  redis.call('HSET', skey(id), 'status', 'disconnected')
  if grace ~= '' then
    set_expiry(id, s, math.min(tonumber(s.expires), now + tonumber(grace)))
  end
  bump(id, s)
  return finish(reply(id))
end

ops.point = function()
  -- The conn's shard: the pointer to `id`, unless the session no longer has
  -- the conn (the caller checked it an instant ago; a rebind since then
  -- wrote its own intent). The previous holder, if another session, must
  -- lose the conn: an intent here, and handed back.
  local conn, id, deadline, repair_at = arg(), arg(), tonumber(arg()), arg()
  local previous = redis.call('GET', ckey(conn))
  redis.call('SET', ckey(conn), id, 'PXAT', deadline)
  if previous and previous ~= id then
    intend(repair_at, 'unbind', previous, conn)
  end
  return finish(previous or false)
end

ops.unlock = function()
  -- The conn's shard: releases the bind lock if this caller still holds it.
  local conn, token = arg(), arg()
  local lock = P .. ':l:' .. T .. ':' .. conn
  if redis.call('GET', lock) == token then redis.call('DEL', lock) end
  return finish(1)
end

ops.unpoint = function()
  -- The conn's shard: drops the pointer if it still names `id`.
  local id, conn = arg(), arg()
  if redis.call('GET', ckey(conn)) == id then redis.call('DEL', ckey(conn)) end
  return finish(1)
end

ops.unbind_if = function()
  -- The session's shard: `conn` went to another session; this one loses it
  -- if it still has it (its version moves, an `unbound` event says why).
  local id, conn, pointer_moved = arg(), arg(), arg()
  if pointer_moved == '1' and lose_conn(id, load(id), conn) then return finish(1) end
  return finish(0)
end

ops.user_add = function()
  -- The user's shard: `id` (a session of another shard) joins the index, if
  -- that session is still the user's (the caller checked it).
  local user, id, deadline, max_per_user, created = arg(), arg(), tonumber(arg()), tonumber(arg()), tonumber(arg())
  user_add(user, id, deadline, max_per_user, created)
  return finish(1)
end

ops.user_rem = function()
  -- The user's shard: drops entries the caller found gone.
  local user = arg()
  local removed = 0
  while argi <= argn do removed = removed + redis.call('ZREM', ukey(user), arg()) end
  return finish(removed)
end

ops.keep = function()
  -- The shard of a user's index or a conn's pointer: kept alive with its
  -- session's new expiry (<user> and <conn> may be empty).
  local id, user, conn, expires = arg(), arg(), arg(), tonumber(arg())
  if user ~= '' and redis.call('ZSCORE', ukey(user), id) then keep(ukey(user), expires) end
  if conn ~= '' and redis.call('GET', ckey(conn)) == id then keep(ckey(conn), expires) end
  return finish(1)
end

ops.done = function()
  -- Intents the sidecar finished: removed.
  local removed = 0
  while argi <= argn do removed = removed + redis.call('ZREM', ikey, arg()) end
  return finish(removed)
end

ops.due_intents = function()
  -- Intents due for repair; each is pushed back, so that a sidecar that
  -- dies while repairing leaves it to the next.
  local limit, retry_at = arg(), arg()
  local due = redis.call('ZRANGEBYSCORE', ikey, '-inf', now, 'LIMIT', 0, limit)
  for _, intent in ipairs(due) do redis.call('ZADD', ikey, retry_at, intent) end
  return finish(due)
end

ops.session_of = function()
  -- What cross-shard work needs to know of a session: { user, conn,
  -- expires } if it is live, else false.
  local id = arg()
  local s = load(id)
  if not live(s) then return finish(false) end
  return finish({ s.user or false, s.conn or false, s.expires })
end

ops.pointer = function()
  local conn = arg()
  return finish(redis.call('GET', ckey(conn)))
end

ops.byuser = function()
  -- Oldest first: { id, 1 } for a session of this shard (checked), { id, 0 }
  -- for another shard's (the caller checks it).
  local user = arg()
  local ids = {}
  for _, entry in ipairs(user_entries(user)) do
    table.insert(ids, { entry[1], entry[2] and 1 or 0 })
  end
  return finish(ids)
end

ops.count = function()
  return finish(redis.call('ZCOUNT', xkey, '(' .. now, '+inf'))
end

ops.sweep = function()
  -- Claims what is due and removes it, publishing one `expired` event each:
  -- atomic, so across all sidecars each expiry is acted on once. Replies
  -- { expired, lag } (lag: the longest due-to-removed time, ms).
  local limit = tonumber(arg())
  local due = redis.call('ZRANGEBYSCORE', xkey, '-inf', now, 'LIMIT', 0, limit, 'WITHSCORES')
  local expired, lag = 0, 0
  for i = 1, #due, 2 do
    local id = due[i]
    local s = load(id)
    if s == nil then
      -- The key expired by itself (every sidecar was gone past the margin).
      redis.call('ZREM', xkey, id)
    elseif live(s) then
      redis.call('ZADD', xkey, tonumber(s.expires), id)
    else
      remove(id, s, 'expired', nil, false)
      expired = expired + 1
      lag = math.max(lag, now - tonumber(s.expires))
    end
  end
  return finish({ expired, lag })
end

ops.audit = function()
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
  return finish({ scanned[1], repaired })
end

ops.owned = function()
  -- A page of the expiry index, keeping the live sessions owned by the
  -- calling sidecar: how a drain finds those it does not hold hot.
  local cursor, page = arg(), arg()
  local scanned = redis.call('ZSCAN', xkey, cursor, 'COUNT', page)
  local members = scanned[2]
  local owned = {}
  for i = 1, #members, 2 do
    if tonumber(members[i + 1]) > now and redis.call('HGET', skey(members[i]), 'node') == node then
      table.insert(owned, members[i])
    end
  end
  return finish({ scanned[1], owned })
end

ops.migrate = function()
  -- Hands sessions to the calling sidecar (`node`), as SESSION.IMPORT does on
  -- the sidecar taking them: each one that is live, still owned by `from` and
  -- still at the version the sender copied moves (node changed, version + 1,
  -- a `migrated` event); the reply has its new state, or false when it did
  -- not move (changed meanwhile, gone, or not the sender's).
  local from = arg()
  local results = {}
  while argi <= argn do
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
  return finish(results)
end

ops.heartbeat = function()
  -- Batched last_active of heartbeats answered from memory: never moves it back.
  while argi <= argn do
    local id, at = arg(), arg()
    local current = redis.call('HGET', skey(id), 'last_active')
    if current and tonumber(current) < tonumber(at) then
      redis.call('HSET', skey(id), 'last_active', at)
    end
  end
  return finish(1)
end

local function unknown(name)
  return redis.error_reply('ERR unknown session-sidecar script operation ' .. tostring(name))
end

-- The entry point: FCALL <name> <numkeys> <keys...> <op> <prefix> <now>
-- <node> <stream-maxlen> <margin> <tag> <args...>. The keys are declared
-- for routing; the operation reads the rest of its arguments itself.
redis.register_function('SESSION_SIDECAR_FUNCTION', function(_, args)
  ARGV = args
  op, P, now, node = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
  maxlen, margin = ARGV[5], tonumber(ARGV[6])
  argi, argn = 8, #ARGV
  channel = P .. ':events'
  use_tag(ARGV[7])
  touched, followups, evictions = {}, {}, 0
  expiring = {}

  if op == 'multi' then
    -- The queued SESSION.* writes of one transaction (EXEC), all applied in
    -- this one call, atomically, in the order given: <count> entries, each
    -- <op> <tag> <now> <nargs> <args...>, the args as that operation takes
    -- them (a `create` entry: one creation's, without the count). Replies one
    -- entry each: { result, touched, followups } or its error. An entry that
    -- fails does not stop the others, as a command that fails inside Redis's
    -- EXEC does not.
    local results = {}
    for i = 1, tonumber(arg()) do
      local name, tag, at, nargs = arg(), arg(), tonumber(arg()), tonumber(arg())
      local start = argi
      argn = start + nargs - 1
      use_tag(tag)
      now = at
      touched, followups, evictions = {}, {}, 0
      local run = ops[name]
      if name == 'create' then run = create_session end
      local ok, result
      if run then ok, result = pcall(run) else ok, result = true, unknown(name) end
      if not ok then result = raised(result) end
      if type(result) == 'number' then result = finish(result) end
      results[i] = result
      argi = start + nargs
      -- The next entry may be another shard's: its expiry index differs.
      add_expiring()
    end
    return results
  end

  local run = ops[op]
  if run then return run() end
  return unknown(op)
end)
