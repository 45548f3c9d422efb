/* Asynchronous Redis connection on a libevent loop.
 *
 * The transport (TCP, unix socket, TLS for rediss://) is a bufferevent owned here; hiredis is
 * used only for RESP (redisReader, redisFormatCommandArgv), so this builds against hiredis
 * 0.14 and 1.x alike. Host names are resolved asynchronously (evdns: hosts file, then the
 * resolv.conf nameservers); every address of a name is tried in turn. TCP sockets get
 * TCP_NODELAY and keep-alive (idle 15 s, interval 5 s, 3 probes).
 *
 * Lifecycle: redis_new() starts connecting from the loop (never inside the call). After the
 * transport connects (and the TLS handshake), `AUTH [user] password`, `SELECT db` (db != 0),
 * `CLIENT SETNAME name` and `PING` are pipelined; any error reply there (WRONGPASS, NOAUTH,
 * LOADING while the server loads its data...) fails the attempt, e.g.
 * "redis host:6379: AUTH failed: WRONGPASS ...". Then the state callback reports REDIS_READY.
 * The connect timeout covers resolve + connect + TLS + those replies.
 *
 * On any error (connect failure or timeout, I/O error, a command timing out, the server
 * closing, a protocol error) every pending command's callback runs with reply == NULL, the
 * state callback reports REDIS_DOWN, and a reconnect is scheduled with exponential backoff
 * and full jitter: uniform in [0, min(backoff_max_ms, backoff_base_ms * 2^failures)]; the
 * count resets at READY. Commands issued while not READY fail (callback with NULL) from the
 * loop, never re-entrantly inside redis_commandv().
 *
 * State callback: called on transitions only: CONNECTING -> READY | DOWN, READY -> DOWN,
 * DOWN -> READY. Failed attempts while already DOWN are not reported again (their reason is
 * in redis_last_error()). redis_get_state() is CONNECTING only before the first outcome.
 * Nothing is reported from redis_free().
 *
 * Replies: the callback gets a redisReply owned by this module and freed after the callback
 * returns. Error replies (REDIS_REPLY_ERROR) are delivered as replies, not as NULL.
 * One reply per command: no SUBSCRIBE/MONITOR (use a connection per blocking reader, with
 * extra_timeout_ms covering the BLOCK time).
 *
 * Redis Cluster (TCP URLs): the URL may name any node; SELECT is refused on a cluster, so db
 * must be 0 (the handshake fails with that error otherwise). A `-MOVED <slot> <host>:<port>`
 * reply never reaches the caller: the connection reads the replies still due on the old node,
 * then reconnects to the named node (same TLS, AUTH, name; no DOWN/READY report) and sends
 * the redirected commands again, in the order they were issued, before any issued meanwhile.
 * `-ASK <slot> <host>:<port>` sends `ASKING` + that one command over a short-lived extra
 * connection to the named node; the default target stays. At most 5 redirections per
 * command; beyond, the last -MOVED/-ASK reply is delivered as is and redis_last_error() says
 * so. Scripts are per node: after a move, EVALSHA may answer NOSCRIPT (the caller falls back
 * to EVAL). Every node learned from MOVED is remembered (up to 16, the URL's first): a failed
 * connection tries the next one, so after a failover (the master dies, a replica takes over)
 * a live node redirects the connection to the new master. Unix-socket URLs never redirect.
 *
 * Re-entrancy: redis_commandv(), redis_drop() and redis_free() may be called from any reply
 * or state callback of this connection. Not thread-safe: one loop, one thread.
 * Messages (redis_last_error, logs) never contain the password.
 */
#ifndef SW_QUEUE_REDIS_H
#define SW_QUEUE_REDIS_H

#include <stddef.h>

#include <event2/event.h>
#include <hiredis.h>
#include "queue/redis_url.h"

typedef struct redis redis;

enum redis_state { REDIS_CONNECTING = 0, REDIS_READY, REDIS_DOWN };

struct redis_opts {
    const struct redis_url *url; /* copied */
    int connect_timeout_ms;      /* default 5000 when 0 */
    int command_timeout_ms;      /* default 10000 when 0; per command, see redis_command_timeout */
    int backoff_base_ms;         /* default 100 */
    int backoff_max_ms;          /* default 5000 */
    /* TLS: CA file for rediss:// (NULL: system default store); verify is on unless
     * tls_insecure. REDIS_TLS_CA_FILE / REDIS_TLS_INSECURE in the worker's config. */
    const char *tls_ca_file;
    int tls_insecure;
    const char *name; /* CLIENT SETNAME value after connect; may be NULL */
};

typedef void (*redis_reply_fn)(redis *r, const redisReply *reply, void *arg);
typedef void (*redis_state_fn)(redis *r, enum redis_state state, void *arg);

/* opts->url is required. Returns NULL only on a TLS context setup failure (err says why,
 * e.g. an unreadable CA file). The first attempt starts from the loop. */
redis *redis_new(struct event_base *base, const struct redis_opts *opts, redis_state_fn state_cb,
                 void *state_arg, char *err, size_t errlen);
/* Fails pending commands (callbacks run with NULL, synchronously) and frees. Safe inside
 * a callback of this connection (the free is deferred until the callback returns). */
void redis_free(redis *r);

enum redis_state redis_get_state(const redis *r);
/* Last error text (connect failure, I/O error, timeout); "" when none yet. Kept after a
 * later successful reconnect (history for logs and /readyz). Owned by r. */
const char *redis_last_error(const redis *r);
/* Number of successful reconnects after the first connect (for metrics). */
unsigned long redis_reconnects(const redis *r);

/* Sends a command. Arguments are binary-safe (argvlen may be NULL for C strings).
 * The reply must arrive within the connection's command timeout plus extra_timeout_ms
 * (use it for BLOCK commands), otherwise the connection is dropped and reconnected.
 * Returns 0 when queued; the callback always runs exactly once (cb may be NULL). */
int redis_commandv(redis *r, redis_reply_fn cb, void *arg, int extra_timeout_ms, int argc,
                   const char **argv, const size_t *argvlen);
/* printf-like convenience over redisvFormatCommand (%s %b %d %lld as hiredis); uses the
 * connection's command timeout (no extra). -1 on a bad format or after redis_free(). */
int redis_command(redis *r, redis_reply_fn cb, void *arg, const char *fmt, ...);

/* 1 when an error reply says the server cannot take the command right now but may soon
 * (READONLY, BUSY, OOM, LOADING, TRYAGAIN, MOVED, ASK, MASTERDOWN, CLUSTERDOWN, NOREPLICAS,
 * UNBLOCKED): the caller retries it. MOVED/ASK reach a caller only past the redirection bound
 * (a cluster still reconfiguring). Matches the first word only, so
 * BUSYGROUP is not transient. msg may be NULL (0). */
int redis_error_transient(const char *msg);

/* Forces a disconnect and reconnect (tests; also used after a protocol error). Pending
 * callbacks run with NULL before it returns, then DOWN is reported (if it was READY). No-op
 * while waiting between attempts. */
void redis_drop(redis *r);

#endif
