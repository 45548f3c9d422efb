#include "queue/scripts.h"

#include <stdio.h>
#include <string.h>

#include <openssl/sha.h>

/* Scripts that write start with "#!lua" (Redis 7 script flags): Redis then refuses them
 * as a whole, before their first line runs, when it cannot write (OOM, READONLY replica,
 * MASTERDOWN...). Each one also does every check before its first write, since Redis does not
 * roll back a script that fails halfway. Times (started_at, finished_at, retry due times)
 * are Redis TIME, never the caller's clock. */

/* The thread lock and its queue, shared by begin and complete (prepended to both).
 * A thread hash's lock_job names the job that holds the thread, lock_entry its entry (""
 * while it waits for a retry). The lock is live while that job has no final status and
 * either waits in {p}:delayed (phase retrying), was released to the stream and not begun yet
 * (phase released), or its entry is pending. Jobs that find the thread held are parked in
 * KEYS[TQ] (members "<order>\n<attempt>\n<job id>\n<job json>", all scored 0, so the set
 * is ordered by <order>: the zero-padded id of the job's first stream entry, i.e. enqueue
 * order). The completion of the holder hands the lock to the first parked job by adding it
 * back to the stream, unless an earlier job of the thread is pending and not begun (read by
 * a worker that died, say): then the lock is just freed, that job takes it when it begins,
 * and its completion releases the parked one. Finding those scans the pending entries
 * (at most 1000) and decodes their jobs. */
#define THREAD_LOCK_LUA                                                                            \
    "local pfx = string.sub(KEYS[1], 1, #KEYS[1] - 4)\n"                                           \
    "local function padded(id)\n"                                                                  \
    "  local a, b = string.match(id or '', '^(%d+)-(%d+)$')\n"                                     \
    "  if not a then return nil end\n"                                                             \
    "  return string.format('%020.0f-%020.0f', tonumber(a), tonumber(b))\n"                        \
    "end\n"                                                                                        \
    "local function lock_live(lj, le)\n"                                                           \
    "  if not lj or lj == '' then return false end\n"                                              \
    "  local h = redis.call('HMGET', pfx .. 'job:' .. lj, 'status', 'phase')\n"                    \
    "  if h[1] and h[1] ~= '' then return false end\n"                                             \
    "  if h[2] == 'retrying' or h[2] == 'released' then return true end\n"                         \
    "  return le and le ~= '' and\n"                                                               \
    "         #redis.call('XPENDING', KEYS[1], ARGV[1], le, le, 1) > 0\n"                          \
    "end\n"                                                                                        \
    "local function job_of(e)\n"                                                                   \
    "  local r = redis.call('XRANGE', KEYS[1], e, e)\n"                                            \
    "  local f, js, ord = r[1] and r[1][2] or {}, nil, nil\n"                                      \
    "  for k = 1, #f - 1, 2 do\n"                                                                  \
    "    if f[k] == 'job' then js = f[k + 1] elseif f[k] == 'order' then ord = f[k + 1] end\n"     \
    "  end\n"                                                                                      \
    "  if not js then return nil end\n"                                                            \
    "  local ok, d = pcall(cjson.decode, js)\n"                                                    \
    "  if not ok or type(d) ~= 'table' then return nil end\n"                                      \
    "  return d.thread, d.id, padded(ord) or padded(e)\n"                                          \
    "end\n"                                                                                        \
    "local function earlier_pending(thread, jid, order)\n"                                         \
    "  for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000)) do\n"          \
    "    if p[1] ~= ARGV[3] then\n"                                                                \
    "      local th, id, o = job_of(p[1])\n"                                                       \
    "      if th == thread and id ~= jid and o and o < order then return true end\n"               \
    "    end\n"                                                                                    \
    "  end\n"                                                                                      \
    "  return false\n"                                                                             \
    "end\n"                                                                                        \
    "local function release_next(th, tq)\n"                                                        \
    "  local h = redis.call('ZRANGE', tq, 0, 0)\n"                                                 \
    "  local o, att, jid, js\n"                                                                    \
    "  if #h > 0 then\n"                                                                           \
    "    o, att, jid, js = string.match(h[1], '^([^\\n]*)\\n([^\\n]*)\\n([^\\n]*)\\n(.*)$')\n"     \
    "  end\n"                                                                                      \
    "  if not o or earlier_pending(ARGV[6], jid, o) then\n"                                        \
    "    redis.call('HDEL', th, 'lock_entry', 'lock_job')\n"                                       \
    "    return\n"                                                                                 \
    "  end\n"                                                                                      \
    "  redis.call('ZREM', tq, h[1])\n"                                                             \
    "  local a, b = string.match(o, '^(%d+)-(%d+)$')\n"                                            \
    "  local id = redis.call('XADD', KEYS[1], '*', 'job', js, 'attempt', att, 'order',\n"          \
    "                        string.format('%.0f-%.0f', tonumber(a), tonumber(b)))\n"              \
    "  redis.call('HSET', th, 'lock_entry', id, 'lock_job', jid)\n"                                \
    "  redis.call('HSET', pfx .. 'job:' .. jid, 'phase', 'released', 'entry', id)\n"               \
    "end\n"                                                                                        \
    "local function release_if_free(th, tq)\n"                                                     \
    "  local l = redis.call('HMGET', th, 'lock_job', 'lock_entry')\n"                              \
    "  if not lock_live(l[1], l[2]) and redis.call('ZCARD', tq) > 0 then\n"                        \
    "    release_next(th, tq)\n"                                                                   \
    "  end\n"                                                                                      \
    "end\n"

/* Scripts that write start with "#!lua" (Redis 7 script flags): Redis then refuses them
 * as a whole, before their first line runs, when it cannot write (OOM, READONLY replica,
 * MASTERDOWN...). Each one also does every check before its first write, since Redis does not
 * roll back a script that fails halfway. Times (started_at, finished_at, retry due times)
 * are Redis TIME, never the caller's clock. */

/* KEYS: jobs, job hash, thread hash, thread queue, cancel key
 * ARGV: group, consumer, entry, delivery count, job id, thread id, organization, project,
 *       order (the job's first entry id), job json, (unused), attempt, can re-attach ("1"
 *       or absent)
 * A replay of our own begin (same entry, owner and delivery count: the first reply was lost
 * to a disconnect) answers "ok" again. A job of a thread held by another job, or behind an
 * earlier job of the thread (parked, or read by a worker and not begun yet), is parked in the
 * thread queue and acked: "busy".
 * A started job reclaimed by a worker that can re-attach (ARGV[13] "1", same entry) whose job
 * hash holds a "reattach" record is taken over (owner and token updated, "reattached"
 * counted): {"reattach", …thread fields…, "reattach", record, "reattach_out", offsets}.
 * Such a worker's begin of a new turn sets the record {"v":1,"step":-1} (no step started
 * yet: a reclaimer may start the turn afresh); another worker's begin removes it.
 * Returns {"fenced"} | {"duplicate", why} | {"cancelled"} | {"started"} | {"tenant"} |
 *         {"busy"} | {"ok", "state", s, "sandbox_id", s, "snapshot", s, "provider", s}
 *         (the thread's previous values, "" when unset). */
static const char begin_lua[] =
    "#!lua\n" THREAD_LOCK_LUA
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)\n"
    "if #p == 0 or p[1][2] ~= ARGV[2] or tostring(p[1][4]) ~= ARGV[4] then\n"
    "  return {'fenced'}\n"
    "end\n"
    "for i, ty in pairs({[2] = 'hash', [3] = 'hash', [4] = 'zset'}) do\n"
    "  local t = redis.call('TYPE', KEYS[i])['ok']\n"
    "  if t ~= 'none' and t ~= ty then\n"
    "    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. t)\n"
    "  end\n"
    "end\n"
    "local tm = redis.call('TIME')\n"
    "local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)\n"
    "local j = redis.call('HMGET', KEYS[2], 'status', 'phase', 'entry', 'owner', 'token')\n"
    "if j[1] and j[1] ~= '' then\n"
    "  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "  release_if_free(KEYS[3], KEYS[4])\n"
    "  return {'duplicate', j[1]}\n"
    "end\n"
    "if j[2] == 'running' then\n"
    "  if j[3] == ARGV[3] and j[4] == ARGV[2] and j[5] == ARGV[4] then\n"
    "    local t = redis.call('HMGET', KEYS[3], 'state', 'sandbox_id', 'snapshot', 'provider')\n"
    "    return {'ok', 'state', t[1] or '', 'sandbox_id', t[2] or '', 'snapshot', t[3] or '',\n"
    "            'provider', t[4] or ''}\n"
    "  end\n"
    "  local ra = redis.call('HGET', KEYS[2], 'reattach')\n"
    "  if ARGV[13] == '1' and j[3] == ARGV[3] and ra and ra ~= '' then\n"
    "    if j[4] ~= ARGV[2] or j[5] ~= ARGV[4] then\n"
    "      redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'token', ARGV[4])\n"
    "      redis.call('HINCRBY', KEYS[2], 'reattached', 1)\n"
    "    end\n"
    "    local t = redis.call('HMGET', KEYS[3], 'state', 'sandbox_id', 'snapshot', 'provider')\n"
    "    return {'reattach', 'state', t[1] or '', 'sandbox_id', t[2] or '', 'snapshot',\n"
    "            t[3] or '', 'provider', t[4] or '', 'reattach', ra, 'reattach_out',\n"
    "            redis.call('HGET', KEYS[2], 'reattach_out') or ''}\n"
    "  end\n"
    "  local e0 = j[3]\n"
    "  if e0 and e0 ~= ARGV[3] then\n"
    "    local q = redis.call('XPENDING', KEYS[1], ARGV[1], e0, e0, 1)\n"
    "    if #q > 0 then\n"
    "      redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "      return {'duplicate', 'running'}\n"
    "    end\n"
    "  end\n"
    "  return {'started'}\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[5]) == 1 then return {'cancelled'} end\n"
    "local t = redis.call('HMGET', KEYS[3], 'organization', 'project', 'lock_job', 'state',\n"
    "                     'sandbox_id', 'snapshot', 'provider', 'lock_entry')\n"
    "if t[1] and (t[1] ~= ARGV[7] or t[2] ~= ARGV[8]) then return {'tenant'} end\n"
    "if t[3] ~= ARGV[5] then\n"
    "  local order = padded(ARGV[9]) or padded(ARGV[3])\n"
    "  local busy = lock_live(t[3], t[8])\n"
    "  if not busy then\n"
    "    local h = redis.call('ZRANGE', KEYS[4], 0, 0)\n"
    "    if #h > 0 and h[1] < order .. '\\n' then\n"
    "      busy = true\n"
    "      release_next(KEYS[3], KEYS[4])\n"
    "    end\n"
    "  end\n"
    "  if not busy then busy = earlier_pending(ARGV[6], ARGV[5], order) end\n"
    "  if busy then\n"
    "    redis.call('ZADD', KEYS[4], 0, order .. '\\n' .. ARGV[12] .. '\\n' .. ARGV[5] .. '\\n' "
    "..\n"
    "               ARGV[10])\n"
    "    redis.call('HSET', KEYS[2], 'phase', 'parked', 'entry', '', 'thread', ARGV[6])\n"
    "    redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "    return {'busy'}\n"
    "  end\n"
    "end\n"
    "redis.call('HSET', KEYS[3], 'organization', ARGV[7], 'project', ARGV[8],\n"
    "           'lock_entry', ARGV[3], 'lock_job', ARGV[5])\n"
    "redis.call('HSET', KEYS[2], 'phase', 'running', 'entry', ARGV[3], 'owner', ARGV[2],\n"
    "           'token', ARGV[4], 'attempt', ARGV[12], 'thread', ARGV[6], 'started_at', now)\n"
    "if ARGV[13] == '1' then\n"
    "  redis.call('HSET', KEYS[2], 'reattach', '{\"v\":1,\"step\":-1}', 'reattach_out', '')\n"
    "else\n"
    "  redis.call('HDEL', KEYS[2], 'reattach', 'reattach_out')\n"
    "end\n"
    "return {'ok', 'state', t[4] or '', 'sandbox_id', t[5] or '', 'snapshot', t[6] or '',\n"
    "        'provider', t[7] or ''}\n";

/* KEYS: jobs, results, job hash, thread hash, events, delayed, dead, thread queue
 * ARGV: 1 group, 2 consumer, 3 entry, 4 delivery count, 5 job id ("" when unknown),
 *       6 thread id ("" when unknown), 7 status, 8 result json, 9 (unused), 10 mode
 *       final|retry|dead, 11 retry member, 12 retry delay ms (from now, Redis TIME),
 *       13 dead reason, 14 results (and dead) maxlen, 15 events maxlen, 16 events ttl s,
 *       17 job ttl s, 18 update thread 0|1, 19 thread state, 20 sandbox id, 21 snapshot
 *       json, 22 provider, 23 job payload, 24 error code
 * The thread lock: a retry keeps it (the job goes on holding its thread while it waits); any
 * other completion of the holder hands it to the first parked job; a completion naming a
 * thread whose lock is free also releases the first parked job (none is left waiting).
 * Returns "ok", "fenced" (the entry is not ours at this delivery count: nothing written) or
 * "duplicate" (the job id already has a terminal result, or runs under another live entry:
 * its job hash, results and events are left alone; the entry is acked, and a dead-letter
 * completion still writes its {p}:dead entry). A replay of our own completion (its reply was
 * lost to a disconnect) answers "ok": the job hash already shows it. */
static const char complete_lua[] =
    "#!lua\n" THREAD_LOCK_LUA "local hasjob = ARGV[5] ~= ''\n"
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)\n"
    "if #p == 0 or p[1][2] ~= ARGV[2] or tostring(p[1][4]) ~= ARGV[4] then\n"
    "  if hasjob then\n"
    "    local o = redis.call('HMGET', KEYS[3], 'owner', 'status', 'entry', 'token', 'phase',\n"
    "                         'retry_entry', 'retry_token', 'retry_owner')\n"
    "    if o[1] == ARGV[2] and o[2] == ARGV[7] and o[3] == ARGV[3] and o[4] == ARGV[4] then\n"
    "      return 'ok'\n"
    "    end\n"
    "    if ARGV[10] == 'retry' and o[6] == ARGV[3] and o[7] == ARGV[4] and o[8] == ARGV[2] then\n"
    "      return 'ok'\n"
    "    end\n"
    "  end\n"
    "  return 'fenced'\n"
    "end\n"
    "for i, ty in pairs({[2] = 'stream', [3] = 'hash', [4] = 'hash', [5] = 'stream',\n"
    "                    [6] = 'zset', [7] = 'stream', [8] = 'zset'}) do\n"
    "  local t = redis.call('TYPE', KEYS[i])['ok']\n"
    "  if t ~= 'none' and t ~= ty then\n"
    "    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. t)\n"
    "  end\n"
    "end\n"
    "local tm = redis.call('TIME')\n"
    "local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)\n"
    "if hasjob then\n"
    "  local j = redis.call('HMGET', KEYS[3], 'status', 'phase', 'entry')\n"
    "  local done = j[1] and j[1] ~= ''\n"
    "  local elsewhere = false\n"
    "  if not done and j[2] == 'running' and j[3] and j[3] ~= ARGV[3] then\n"
    "    elsewhere = #redis.call('XPENDING', KEYS[1], ARGV[1], j[3], j[3], 1) > 0\n"
    "  end\n"
    "  if done or elsewhere then\n"
    "    if ARGV[10] == 'dead' then\n"
    "      redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[14], '*', 'id', ARGV[5],\n"
    "                 'thread', ARGV[6], 'entry', ARGV[3],\n"
    "                 'reason', ARGV[13] .. ' (job ' .. ARGV[5] .. ' is already ' ..\n"
    "                 (done and j[1] or 'running') .. '; its result is kept)', 'job', ARGV[23])\n"
    "    end\n"
    "    redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "    return 'duplicate'\n"
    "  end\n"
    "end\n"
    "if ARGV[18] == '1' then\n"
    "  redis.call('HSET', KEYS[4], 'state', ARGV[19], 'sandbox_id', ARGV[20],\n"
    "             'snapshot', ARGV[21], 'provider', ARGV[22], 'updated_at', now,\n"
    "             'last_job', ARGV[5])\n"
    "end\n"
    "local holder = ARGV[6] ~= '' and hasjob and redis.call('HGET', KEYS[4], 'lock_job') == "
    "ARGV[5]\n"
    "if ARGV[10] == 'retry' then\n"
    "  redis.call('ZADD', KEYS[6], now + tonumber(ARGV[12]), ARGV[11])\n"
    "  if hasjob then\n"
    "    redis.call('HSET', KEYS[3], 'phase', 'retrying', 'entry', '', 'last_error', ARGV[24],\n"
    "               'retry_entry', ARGV[3], 'retry_token', ARGV[4], 'retry_owner', ARGV[2])\n"
    "    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[15], '*', 'type', 'retry',\n"
    "               'status', ARGV[7], 'result', ARGV[8])\n"
    "  end\n"
    "  if holder then redis.call('HSET', KEYS[4], 'lock_entry', '') end\n"
    "else\n"
    "  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[14], '*', 'id', ARGV[5],\n"
    "             'thread', ARGV[6], 'status', ARGV[7], 'result', ARGV[8], 'entry', ARGV[3])\n"
    "  if hasjob then\n"
    "    redis.call('HSET', KEYS[3], 'phase', 'done', 'status', ARGV[7], 'result', ARGV[8],\n"
    "               'finished_at', now, 'owner', ARGV[2], 'entry', ARGV[3],\n"
    "               'token', ARGV[4])\n"
    "    redis.call('HDEL', KEYS[3], 'reattach', 'reattach_out')\n"
    "    redis.call('EXPIRE', KEYS[3], ARGV[17])\n"
    "    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[15], '*', 'type', 'done',\n"
    "               'status', ARGV[7], 'result', ARGV[8])\n"
    "    redis.call('EXPIRE', KEYS[5], ARGV[16])\n"
    "  end\n"
    "  if ARGV[10] == 'dead' then\n"
    "    redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[14], '*', 'id', ARGV[5],\n"
    "               'thread', ARGV[6], 'entry', ARGV[3], 'reason', ARGV[13], 'job', ARGV[23])\n"
    "  end\n"
    "  if holder then\n"
    "    release_next(KEYS[4], KEYS[8])\n"
    "  end\n"
    "end\n"
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "if ARGV[6] ~= '' then release_if_free(KEYS[4], KEYS[8]) end\n"
    "return 'ok'\n";

/* KEYS: jobs, events.  ARGV: group, consumer, entry, delivery count, events maxlen,
 *       field, value…
 * A progress event, fenced like a completion: appended only while the entry is ours at our
 * delivery count, so a worker that lost its lease cannot add events after the new owner's
 * "done". Returns 1 (written) or 0 (fenced). */
static const char event_lua[] =
    "#!lua\n"
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)\n"
    "if #p == 0 or p[1][2] ~= ARGV[2] or tostring(p[1][4]) ~= ARGV[4] then return 0 end\n"
    "local t = redis.call('TYPE', KEYS[2])['ok']\n"
    "if t ~= 'none' and t ~= 'stream' then\n"
    "  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' is a ' .. t)\n"
    "end\n"
    "redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 6))\n"
    "return 1\n";

/* KEYS: jobs, job hash, events.  ARGV: 1 group, 2 consumer, 3 entry, 4 delivery count,
 *       5 events maxlen, 6 hand-off consumer ("": none), 7 hand-off idle ms, 8 n, then n hash
 *       field/value pairs, then event field/value pairs (none: no event).
 * Turn progress, fenced like an event: the hash fields (the re-attach record) and the event
 * are written together or not at all. With a hand-off consumer the entry also moves to it,
 * looking idle for ARGV[7] ms (delivery count kept), so any worker's next reclaim takes it
 * without waiting for the lease, and "handoffs" is counted in the job hash. Returns 1
 * (written) or 0 (fenced). */
static const char progress_lua[] =
    "#!lua\n"
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)\n"
    "if #p == 0 or p[1][2] ~= ARGV[2] or tostring(p[1][4]) ~= ARGV[4] then return 0 end\n"
    "for i, ty in pairs({[2] = 'hash', [3] = 'stream'}) do\n"
    "  local t = redis.call('TYPE', KEYS[i])['ok']\n"
    "  if t ~= 'none' and t ~= ty then\n"
    "    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. t)\n"
    "  end\n"
    "end\n"
    "local n = tonumber(ARGV[8]) or 0\n"
    "if n > 0 then redis.call('HSET', KEYS[2], unpack(ARGV, 9, 8 + 2 * n)) end\n"
    "if #ARGV > 8 + 2 * n then\n"
    "  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 9 + 2 * n))\n"
    "end\n"
    "if ARGV[6] ~= '' then\n"
    "  redis.call('HINCRBY', KEYS[2], 'handoffs', 1)\n"
    "  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[6], 0, ARGV[3], 'IDLE', ARGV[7], 'JUSTID')\n"
    "end\n"
    "return 1\n";

/* KEYS: jobs, then one cancel key per entry (same order as the entries)
 * ARGV: group, consumer, entry ids…
 * Renews the entries still ours (XCLAIM … 0 … JUSTID: idle reset, delivery count kept).
 * Returns {lost entries, entries whose cancel key exists}. */
static const char renew_lua[] =
    "local lost, cancelled = {}, {}\n"
    "for i = 3, #ARGV do\n"
    "  local e = ARGV[i]\n"
    "  local p = redis.call('XPENDING', KEYS[1], ARGV[1], e, e, 1)\n"
    "  if #p > 0 and p[1][2] == ARGV[2] then\n"
    "    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, e, 'JUSTID')\n"
    "    if redis.call('EXISTS', KEYS[i - 1]) == 1 then cancelled[#cancelled + 1] = e end\n"
    "  else\n"
    "    lost[#lost + 1] = e\n"
    "  end\n"
    "end\n"
    "return {lost, cancelled}\n";

/* KEYS: jobs.  ARGV: group, consumer, min idle ms, cursor, count, hand-off consumer, "1" to
 *       take hand-offs only.
 * Takes the entries draining workers handed off (owned by the hand-off consumer) first, at
 * once, then (unless "1") entries idle longer than the lease. Returns {next cursor, {{entry,
 * delivery count, {field, value…}, handed off 1|0}…}}. Entries deleted from the stream are
 * dropped from the PEL by XCLAIM and XAUTOCLAIM themselves (Redis 7.0+). */
static const char reclaim_lua[] =
    "local out = {}\n"
    "local function take(id, fields, h)\n"
    "  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)\n"
    "  if #p > 0 and fields then out[#out + 1] = {id, p[1][4], fields, h} end\n"
    "end\n"
    "local n = tonumber(ARGV[5])\n"
    "for _, h in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', n, ARGV[6])) do\n"
    "  local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, h[1])\n"
    "  if #c > 0 then take(c[1][1], c[1][2], 1) end\n"
    "end\n"
    "if ARGV[7] == '1' or #out >= n then return {ARGV[4], out} end\n"
    "local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],\n"
    "                     'COUNT', n - #out)\n"
    "for _, e in ipairs(r[2]) do take(e[1], e[2], 0) end\n"
    "return {r[1], out}\n";

/* KEYS: delayed, jobs, dead.  ARGV: (unused), limit.
 * Moves members due by Redis TIME. Members are "<attempt>\n<job json>"; a malformed member
 * goes to the dead stream. */
static const char promote_lua[] =
    "#!lua\n"
    "local tm = redis.call('TIME')\n"
    "local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)\n"
    "local m = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[2])\n"
    "for _, v in ipairs(m) do\n"
    "  local nl = string.find(v, '\\n', 1, true)\n"
    "  if nl then\n"
    "    redis.call('XADD', KEYS[2], '*', 'job', string.sub(v, nl + 1),\n"
    "               'attempt', string.sub(v, 1, nl - 1))\n"
    "  else\n"
    "    redis.call('XADD', KEYS[3], '*', 'reason', 'malformed delayed entry', 'job', v)\n"
    "  end\n"
    "  redis.call('ZREM', KEYS[1], v)\n"
    "end\n"
    "return #m\n";

/* KEYS: jobs, job hash.  ARGV: job json, job ttl s.
 * Producer-side idempotency: adds the job unless its id was already enqueued (the job hash
 * exists). Returns {"added", entry} or {"exists", phase or status}. */
static const char enqueue_lua[] = "#!lua\n"
                                  "if redis.call('EXISTS', KEYS[2]) == 1 then\n"
                                  "  local h = redis.call('HMGET', KEYS[2], 'status', 'phase')\n"
                                  "  return {'exists', h[1] or h[2] or 'queued'}\n"
                                  "end\n"
                                  "local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[1])\n"
                                  "redis.call('HSET', KEYS[2], 'phase', 'queued', 'entry', id)\n"
                                  "redis.call('EXPIRE', KEYS[2], ARGV[2])\n"
                                  "return {'added', id}\n";

/* KEYS: jobs.  ARGV: group, consumer, entry, job payload, attempt, order.
 * If the entry is still ours, adds a copy at the end of the stream (keeping the job's order
 * among its thread's jobs) and acknowledges the original, so another worker takes it at once
 * (Redis 7 has no XNACK). Returns 1 or 0. */
static const char handback_lua[] =
    "#!lua\n"
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)\n"
    "if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end\n"
    "redis.call('XADD', KEYS[1], '*', 'job', ARGV[4], 'attempt', ARGV[5], 'order', ARGV[6])\n"
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "return 1\n";

static const char *const sources[SCRIPT__COUNT] = {begin_lua,    complete_lua, renew_lua,
                                                   reclaim_lua,  promote_lua,  enqueue_lua,
                                                   handback_lua, event_lua,    progress_lua};

const char *scripts_source(enum queue_script s)
{
    return sources[s];
}

const char *scripts_sha(enum queue_script s)
{
    static char shas[SCRIPT__COUNT][41];
    if (!shas[s][0]) {
        unsigned char md[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)sources[s], strlen(sources[s]), md);
        for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
            snprintf(shas[s] + 2 * i, 3, "%02x", md[i]);
    }
    return shas[s];
}
