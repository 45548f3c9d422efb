/* A Redis command's argument vector being built; every argument is copied.
 * Embedded by value: zero-initialise, cmd_add…, cmd_send (any number of times), cmd_release. */
#ifndef SW_QUEUE_CMD_H
#define SW_QUEUE_CMD_H

#include <stddef.h>

#include "queue/redis.h"

struct cmd {
    int argc, cap;
    char **argv;
    const char **cargv; /* the same pointers, as redis_commandv takes them */
    size_t *lens;
};

void cmd_addn(struct cmd *c, const char *p, size_t n); /* binary-safe; p NULL adds "" */
void cmd_add(struct cmd *c, const char *s);            /* s NULL adds "" */
void cmd_addll(struct cmd *c, long long v);
/* Replaces argument i (e.g. EVALSHA → EVAL after NOSCRIPT). */
void cmd_set(struct cmd *c, int i, const char *s);
void cmd_release(struct cmd *c);
/* redis_commandv with this vector; see queue/redis.h. */
int cmd_send(redis *r, const struct cmd *c, redis_reply_fn cb, void *arg, int extra_timeout_ms);

#endif
