#include "tests/support/sync_provider.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include <cjson/cJSON.h>

#include "tests/support/test.h"

long sp_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec * 1000L + tv.tv_usec / 1000;
}

int sp_wait(struct event_base *base, const int *flag, long ms)
{
    long end = sp_now_ms() + ms;
    while (!*flag && sp_now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    return *flag ? 0 : -1;
}

static void pumped(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

void sp_pump(struct event_base *base, long ms)
{
    int done = 0;
    struct event *t = evtimer_new(base, pumped, &done);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(t, &tv);
    while (!done)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
}

int sp_run_until(struct event_base *base, const int *flag, int timeout_s)
{
    if (sp_wait(base, flag, timeout_s * 1000L) == 0)
        return 0;
    printf("  timed out after %d s\n", timeout_s);
    return -1;
}

struct sp_acq {
    int done;
    struct sandbox *sb;
    char err[512];
};

static void acq_cb(void *arg, struct sandbox *sb, const char *err)
{
    struct sp_acq *a = arg;
    a->done = 1;
    a->sb = sb;
    snprintf(a->err, sizeof(a->err), "%s", err ? err : "");
}

struct sandbox *sp_create(struct event_base *base, struct provider *p, const char *thread,
                          const char *worker, long timeout_ms)
{
    struct sandbox_spec spec = {.thread = thread,
                                .job = "j",
                                .worker = worker,
                                .organization = "o",
                                .project = "p",
                                .feature = SANDBOX_DATA_APP};
    struct sp_acq a = {0};
    provider_create(p, &spec, acq_cb, &a);
    CHECK(sp_wait(base, &a.done, timeout_ms) == 0);
    if (a.err[0])
        printf("  create: %s\n", a.err);
    return a.sb;
}

struct sp_ref {
    int done, rc;
    char *ref;
};

static void ref_cb(void *arg, int rc, const cJSON *ref, const char *err)
{
    struct sp_ref *w = arg;
    w->done = 1;
    w->rc = rc;
    w->ref = ref ? cJSON_PrintUnformatted(ref) : NULL;
    if (rc != 0)
        printf("  suspend: %s\n", err ? err : "?");
}

int sp_suspend(struct event_base *base, struct sandbox *sb, char **ref, long timeout_ms)
{
    struct sp_ref w = {0};
    provider_suspend(sb, ref_cb, &w);
    int rc = sp_wait(base, &w.done, timeout_ms) == 0 ? w.rc : -1;
    *ref = w.ref;
    return rc;
}

struct sp_list_wait {
    int done;
    struct sp_listing *l;
};

static void listed(void *arg, int rc, const struct provider_item *items, size_t n, const char *err)
{
    struct sp_list_wait *w = arg;
    struct sp_listing *l = w->l;
    w->done = 1;
    l->rc = rc;
    l->n = n;
    snprintf(l->err, sizeof(l->err), "%s", err ? err : "");
    for (size_t i = 0; i < n && i < SP_LIST_MAX; i++) {
        snprintf(l->ids[i], sizeof(l->ids[i]), "%s", items[i].id);
        snprintf(l->threads[i], sizeof(l->threads[i]), "%s",
                 items[i].thread ? items[i].thread : "");
        l->created[i] = items[i].created_ms;
    }
}

void sp_list(struct event_base *base, struct provider *p, struct sp_listing *l, long timeout_ms)
{
    memset(l, 0, sizeof(*l));
    struct sp_list_wait w = {0, l};
    provider_list(p, listed, &w);
    CHECK_EQ_INT(w.done, 0); /* never from inside the call */
    if (sp_wait(base, &w.done, timeout_ms) != 0) {
        l->rc = -1;
        snprintf(l->err, sizeof(l->err), "timeout");
    }
    CHECK_EQ_INT(w.done, 1);
    if (l->rc != 0)
        printf("  list: %s\n", l->err);
}

int sp_find(const struct sp_listing *l, const char *id)
{
    for (size_t i = 0; i < l->n && i < SP_LIST_MAX; i++)
        if (strcmp(l->ids[i], id) == 0)
            return (int)i + 1;
    return 0;
}

struct sp_run {
    int done;
    struct sweep_report r;
};

static void run_done(void *arg, const struct sweep_report *r)
{
    struct sp_run *w = arg;
    w->r = *r;
    w->done = 1;
}

int sp_sweep(struct event_base *base, sweep *s, struct sweep_report *r, long timeout_ms)
{
    long end = sp_now_ms() + 10000;
    while (!sweep_ready(s) && sp_now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    struct sp_run w = {0};
    if (sweep_run(s, run_done, &w) != 0 || sp_wait(base, &w.done, timeout_ms) != 0)
        return -1;
    *r = w.r;
    if (r->err[0])
        printf("  sweep: %s\n", r->err);
    return 0;
}
