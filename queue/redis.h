/* Asynchronous Redis connection on a libevent loop.
 *
 * The transport (TCP, unix socket, TLS for rediss://) is a bufferevent owned here; hiredis is
 * used only for RESP (redisReader, redisFormatCommandArgv), so this builds against hiredis
 * 0.14 and 1.x alike.
 *
 * Lifecycle: redis_new() starts connecting at once. After the transport connects, AUTH and
 * SELECT (from the URL) are sent, then the state callback reports REDIS_READY. On any error
 * (connect failure or timeout, I/O error, a command timing out, the server closing) every
 * pending command's callback runs with reply == NULL, the state callback reports
 * REDIS_DOWN, and a reconnect is scheduled with exponential backoff and full jitter
 * (base 100 ms, cap 5 s by default). Commands issued while not READY fail at once
 * (callback with NULL, from the loop, never re-entrantly inside redis_command()).
 *
 * Replies: the callback gets a redisReply owned by this module and freed after the callback
 * returns. Error replies (REDIS_REPLY_ERROR) are delivered as replies, not as NULL.
 */
#ifndef SW_QUEUE_REDIS_H
#define SW_QUEUE_REDIS_H

#include <stddef.h>

#include <event2/event.h>
#include <hiredis.h>

typedef struct redis redis;

enum redis_state { REDIS_CONNECTING = 0, REDIS_READY, REDIS_DOWN };

/* A parsed REDIS_URL: redis://[user:pass@]host[:port][/db], rediss://… (TLS),
 * unix:///path/to.sock[?db=N]. Strings are malloc'd; free with redis_url_release. */
struct redis_url {
    int tls;
    char *host;      /* NULL for unix */
    int port;        /* default 6379 */
    char *unix_path; /* NULL for TCP */
    char *user;      /* NULL when absent */
    char *password;  /* NULL when absent */
    int db;          /* default 0 */
};

/* 0 on success; -1 with a one-line reason in err (never containing the password). */
int redis_url_parse(const char *url, struct redis_url *out, char *err, size_t errlen);
void redis_url_release(struct redis_url *u);

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

/* Returns NULL only on a TLS context setup failure (err says why). */
redis *redis_new(struct event_base *base, const struct redis_opts *opts, redis_state_fn state_cb,
                 void *state_arg, char *err, size_t errlen);
/* Fails pending commands (callbacks run with NULL, synchronously) and frees. Safe inside
 * a callback of this connection (the free is deferred until the callback returns). */
void redis_free(redis *r);

enum redis_state redis_get_state(const redis *r);
/* Last error text (connect failure, I/O error, timeout); "" when none. */
const char *redis_last_error(const redis *r);
/* Number of successful reconnects after the first connect (for metrics). */
unsigned long redis_reconnects(const redis *r);

/* Sends a command. Arguments are binary-safe (argvlen may be NULL for C strings).
 * The reply must arrive within the connection's command timeout plus extra_timeout_ms
 * (use it for BLOCK commands), otherwise the connection is dropped and reconnected.
 * Returns 0 when queued; the callback always runs exactly once (cb may be NULL). */
int redis_commandv(redis *r, redis_reply_fn cb, void *arg, int extra_timeout_ms, int argc,
                   const char **argv, const size_t *argvlen);
/* printf-like convenience over redisFormatCommand (%s %b %d %lld as hiredis). */
int redis_command(redis *r, redis_reply_fn cb, void *arg, const char *fmt, ...);

/* Forces a disconnect and reconnect (tests; also used after a protocol error). */
void redis_drop(redis *r);

#endif
