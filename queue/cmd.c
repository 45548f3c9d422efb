#include "queue/cmd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"

void cmd_addn(struct cmd *c, const char *p, size_t n)
{
    if (c->argc == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
        c->argv = xrealloc(c->argv, (size_t)c->cap * sizeof(*c->argv));
        c->cargv = xrealloc(c->cargv, (size_t)c->cap * sizeof(*c->cargv));
        c->lens = xrealloc(c->lens, (size_t)c->cap * sizeof(*c->lens));
    }
    c->argv[c->argc] = xstrndup(p ? p : "", p ? n : 0);
    c->cargv[c->argc] = c->argv[c->argc];
    c->lens[c->argc] = p ? n : 0;
    c->argc++;
}

void cmd_add(struct cmd *c, const char *s)
{
    cmd_addn(c, s, s ? strlen(s) : 0);
}

void cmd_addll(struct cmd *c, long long v)
{
    char n[32];
    snprintf(n, sizeof(n), "%lld", v);
    cmd_add(c, n);
}

void cmd_set(struct cmd *c, int i, const char *s)
{
    free(c->argv[i]);
    c->argv[i] = xstrdup(s);
    c->cargv[i] = c->argv[i];
    c->lens[i] = strlen(s);
}

void cmd_release(struct cmd *c)
{
    for (int i = 0; i < c->argc; i++)
        free(c->argv[i]);
    free(c->argv);
    free(c->cargv);
    free(c->lens);
    memset(c, 0, sizeof(*c));
}

int cmd_send(redis *r, const struct cmd *c, redis_reply_fn cb, void *arg, int extra_timeout_ms)
{
    return redis_commandv(r, cb, arg, extra_timeout_ms, c->argc, c->cargv, c->lens);
}
