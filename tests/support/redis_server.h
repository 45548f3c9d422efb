/* A real redis-server for tests: one per test_redis_start(), in its own temporary directory,
 * on a free loopback port (or a unix socket, or TLS with a CA generated at start).
 *
 *   struct test_redis *srv = test_redis_start(NULL);
 *   if (!srv) SKIP("no redis-server");            (the reason is already printed)
 *   ... connect to test_redis_url(srv) ...
 *   char *v = test_redis_cli(srv, "GET %s", key); ...; free(v);
 *   test_redis_free(srv);
 *
 * The server runs with `appendonly yes`, `appendfsync always`, `save ""`, and
 * `enable-debug-command local`; it dies with the test process (PR_SET_PDEATHSIG on Linux). */
#ifndef SW_TESTS_REDIS_SERVER_H
#define SW_TESTS_REDIS_SERVER_H

/* All members optional (opts may be NULL). */
struct test_redis_opts {
    int tls; /* TLS only (tls-port; port 0); URL rediss://localhost:PORT; the certificate
              * names localhost and 127.0.0.1; the server also listens on [::1] (if the host
              * has IPv6), which the certificate does not name */
    const char *password; /* requirepass; the URL then carries ":password@" */
    int unix_socket;      /* also listen on DIR/redis.sock; URL unix:///DIR/redis.sock */
};

struct test_redis;

/* Starts a server and waits until it answers PING (10 s). NULL with a message printed to
 * stdout ("skipped: redis-server not found", or why it failed) when it cannot run. */
struct test_redis *test_redis_start(const struct test_redis_opts *opts);

/* redis://127.0.0.1:PORT, rediss://localhost:PORT, or unix:///DIR/redis.sock, with
 * ":password@" when a password is set. Owned by r. */
const char *test_redis_url(const struct test_redis *r);
int test_redis_port(const struct test_redis *r); /* TCP or TLS port */
/* TLS only: the PEM CA that signed the server certificate (CN and SAN localhost and
 * 127.0.0.1); NULL otherwise. Owned by r. */
const char *test_redis_ca_file(const struct test_redis *r);
/* The temporary directory (config, data, log, certificates). Owned by r. */
const char *test_redis_dir(const struct test_redis *r);

/* SIGTERM and wait (10 s, then SIGKILL); data persists. 0 on a clean exit, -1 otherwise.
 * A no-op returning 0 when the server is not running. */
int test_redis_stop(struct test_redis *r);
/* Stops (if running) and starts again on the same port/socket and data directory; also the
 * way to bring back a killed server. 0 once it answers PING, -1 (message printed) otherwise. */
int test_redis_restart(struct test_redis *r);
/* SIGKILL and reap: only what appendfsync already wrote survives. */
void test_redis_kill(struct test_redis *r);
/* Stops if running and removes the temporary directory. NULL is a no-op. */
void test_redis_free(struct test_redis *r);

/* Runs one command through `redis-cli` (password via REDISCLI_AUTH, --tls --cacert for TLS).
 * The command text is formatted printf-style, then split by redis-cli itself: words separated
 * by spaces, "double quotes" with \n \xHH escapes for odd bytes. Returns redis-cli's raw-mode
 * output (stdout not a terminal), stdout and stderr together, with trailing newlines removed:
 * a string as is, an integer as digits, nil as "", an error as its text ("ERR ..."), an array
 * one element per line. malloc'd, caller frees; NULL only if redis-cli could not run. */
char *test_redis_cli(const struct test_redis *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
