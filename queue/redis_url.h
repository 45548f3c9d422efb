/* REDIS_URL parsing, shared by the worker, sandboxctl and the tests. */
#ifndef SW_QUEUE_REDIS_URL_H
#define SW_QUEUE_REDIS_URL_H

#include <stddef.h>

/* A parsed REDIS_URL. Accepted forms (scheme case-insensitive):
 *   redis://[[user]:password@]host[:port][/db][?db=N]     port 6379 by default
 *   rediss://...                                           the same, over TLS
 *   unix://[[user]:password@]/path/to.sock[?db=N]
 * host is a name, an IPv4 literal or a bracketed IPv6 literal ([::1]:6379). user, password
 * and the socket path are percent-decoded (%40 for '@', %2F for '/', %3A for ':'); a raw
 * '@' in a password parses too (the last '@' ends it). A user name needs a password
 * ("user@host" is an error). The only query parameter is db (it overrides a path db).
 * Strings are malloc'd; free with redis_url_release. */
struct redis_url {
    int tls;
    char *host;      /* NULL for unix */
    int port;        /* default 6379 */
    char *unix_path; /* NULL for TCP */
    char *user;      /* NULL when absent */
    char *password;  /* NULL when absent */
    int db;          /* default 0 */
};

/* 0 on success; -1 with a one-line reason in err ("invalid Redis URL: ...", never containing
 * the password) and *out left empty (safe to release). */
int redis_url_parse(const char *url, struct redis_url *out, char *err, size_t errlen);
void redis_url_release(struct redis_url *u);

#endif
