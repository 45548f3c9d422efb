#include "queue/keys.h"

#include <string.h>

#include "lib/buf.h"

/* "{prefix}:kind[:id]", built without printf (keys are made for every job). */
static char *key2(const char *prefix, const char *kind, const char *id)
{
    struct buf b;
    buf_init(&b);
    buf_reserve(&b, strlen(prefix) + strlen(kind) + (id ? strlen(id) + 1 : 0) + 3);
    buf_putc(&b, '{');
    buf_puts(&b, prefix);
    buf_puts(&b, "}:");
    buf_puts(&b, kind);
    if (id) {
        buf_putc(&b, ':');
        buf_puts(&b, id);
    }
    return buf_detach(&b);
}

char *keys_jobs(const char *prefix)
{
    return key2(prefix, "jobs", NULL);
}

char *keys_results(const char *prefix)
{
    return key2(prefix, "results", NULL);
}

char *keys_delayed(const char *prefix)
{
    return key2(prefix, "delayed", NULL);
}

char *keys_dead(const char *prefix)
{
    return key2(prefix, "dead", NULL);
}

char *keys_job(const char *prefix, const char *job_id)
{
    return key2(prefix, "job", job_id);
}

char *keys_events(const char *prefix, const char *job_id)
{
    return key2(prefix, "events", job_id);
}

char *keys_thread(const char *prefix, const char *thread_id)
{
    return key2(prefix, "thread", thread_id);
}

char *keys_cancel(const char *prefix, const char *job_id)
{
    return key2(prefix, "cancel", job_id);
}

char *keys_threadq(const char *prefix, const char *thread_id)
{
    return key2(prefix, "threadq", thread_id);
}
