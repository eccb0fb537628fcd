//! The Lua scripts that make each store operation atomic on a session's slot. Every script
//! treats a session whose keys disagree (rows shorter or longer than `persisted` says, e.g. after
//! a partial eviction) as gone, so the edge is told to upload again from 0 rather than being
//! served rows that are not there. The quota scripts read `TIME` before writing, which needs
//! Redis 5 or later (scripts replicated by their effects; tested on Debian's 7.0).

use std::sync::LazyLock;

use redis::Script;

/// Append one upload. KEYS: meta, rows. ARGV: start, rows, hidden_size, encoding, row_bytes,
/// payload, ttl_ms, may_create ("1" once the client's quota admitted the session), epoch,
/// rewrite_from.
///
/// Replies `{"persisted", p}`, `{"missing", p}` (the upload starts beyond `p`; nothing stored),
/// `{"create"}` (the session does not exist and may not be created yet),
/// `{"layout", hidden_size, encoding}` (the session stores rows of another shape) or
/// `{"stale", epoch}` (the session is on a newer epoch; nothing changed). An upload of a newer
/// epoch than the session's first cuts the rows back to `rewrite_from` (a string cannot be
/// shortened in place: the kept prefix is written back), then appends as usual.
pub static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local start, nrows, rb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
local ttl = ARGV[7]
local epoch, rewrite_from = tonumber(ARGV[9]), tonumber(ARGV[10])
local meta = redis.call('HMGET', KEYS[1], 'persisted', 'hidden_size', 'encoding', 'row_bytes',
  'epoch')
local persisted = tonumber(meta[1])
if persisted and redis.call('STRLEN', KEYS[2]) ~= persisted * tonumber(meta[4]) then
  redis.call('DEL', KEYS[1], KEYS[2])
  persisted = nil
end
if not persisted then
  if start > 0 then return {'missing', '0'} end
  if ARGV[8] ~= '1' then return {'create'} end
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'persisted', 0, 'hidden_size', ARGV[3], 'encoding', ARGV[4],
    'row_bytes', ARGV[5], 'epoch', epoch)
  persisted = 0
elseif meta[2] ~= ARGV[3] or meta[3] ~= ARGV[4] then
  return {'layout', meta[2], meta[3]}
else
  local current = tonumber(meta[5]) or 0
  if epoch < current then return {'stale', tostring(current)} end
  if epoch > current then
    if rewrite_from < persisted then
      if rewrite_from == 0 then
        redis.call('DEL', KEYS[2])
      else
        redis.call('SET', KEYS[2], redis.call('GETRANGE', KEYS[2], 0, rewrite_from * rb - 1))
      end
      persisted = rewrite_from
    end
    redis.call('HSET', KEYS[1], 'persisted', persisted, 'epoch', epoch)
  end
end
if start <= persisted and persisted - start < nrows then
  redis.call('APPEND', KEYS[2], string.sub(ARGV[6], (persisted - start) * rb + 1))
  persisted = start + nrows
  redis.call('HSET', KEYS[1], 'persisted', persisted)
end
redis.call('PEXPIRE', KEYS[1], ttl)
if persisted > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if start > persisted then return {'missing', tostring(persisted)} end
return {'persisted', tostring(persisted)}
"#,
    )
});

/// Read a session's metadata and the rows of positions `[from, to)` (none when `from == to`),
/// refreshing its TTL. KEYS: meta, rows. ARGV: from, to, ttl_ms.
///
/// Replies `{}` when the session does not exist, else
/// `{persisted, hidden_size, encoding, rows, epoch}` (`rows` empty when `to > persisted`).
pub static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local meta = redis.call('HMGET', KEYS[1], 'persisted', 'hidden_size', 'encoding', 'row_bytes',
  'epoch')
local persisted, rb = tonumber(meta[1]), tonumber(meta[4])
if not persisted then return {} end
if redis.call('STRLEN', KEYS[2]) ~= persisted * rb then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {}
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local from, to = tonumber(ARGV[1]), tonumber(ARGV[2])
local rows = ''
if from < to and to <= persisted then
  rows = redis.call('GETRANGE', KEYS[2], from * rb, to * rb - 1)
end
return {meta[1], meta[2], meta[3], rows, meta[5] or '0'}
"#,
    )
});

/// Admit a session under the client's quota. KEYS: the client's session set. ARGV: session,
/// max sessions. Replies `{"ok"}` or `{"full", held}`. Idempotent: a session already admitted
/// is admitted again (its reservation time refreshed).
pub static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local held = redis.call('ZCARD', KEYS[1])
  if held >= tonumber(ARGV[2]) then return {'full', tostring(held)} end
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
return {'ok'}
"#,
    )
});

/// Forget sessions of a client's set that were reserved before a cutoff. KEYS: the client's
/// session set. ARGV: cutoff as milliseconds before now, then the sessions. Replies how many
/// went. Sessions reserved more recently stay: their first upload may be on its way.
pub static PRUNE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[1])
local removed = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) < cutoff then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"#,
    )
});
