#include "worker/sweep.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "queue/sweepq.h"

/* ---- a set of strings (open addressing, grows at half load) ---- */

struct strset {
    char **slot;
    size_t cap, n;
};

static uint64_t strset_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static int strset_has(const struct strset *set, const char *s)
{
    if (!set->cap || !s || !*s)
        return 0;
    for (size_t i = strset_hash(s) & (set->cap - 1);; i = (i + 1) & (set->cap - 1)) {
        if (!set->slot[i])
            return 0;
        if (strcmp(set->slot[i], s) == 0)
            return 1;
    }
}

static void strset_add(struct strset *set, const char *s)
{
    if (!s || !*s || strset_has(set, s))
        return;
    if ((set->n + 1) * 2 > set->cap) {
        struct strset big = {xcalloc(set->cap ? set->cap * 2 : 64, sizeof(char *)),
                             set->cap ? set->cap * 2 : 64, 0};
        for (size_t i = 0; i < set->cap; i++) {
            if (!set->slot[i])
                continue;
            size_t j = strset_hash(set->slot[i]) & (big.cap - 1);
            while (big.slot[j])
                j = (j + 1) & (big.cap - 1);
            big.slot[j] = set->slot[i];
            big.n++;
        }
        free(set->slot);
        *set = big;
    }
    size_t i = strset_hash(s) & (set->cap - 1);
    while (set->slot[i])
        i = (i + 1) & (set->cap - 1);
    set->slot[i] = xstrdup(s);
    set->n++;
}

static void strset_release(struct strset *set)
{
    for (size_t i = 0; i < set->cap; i++)
        free(set->slot[i]);
    free(set->slot);
    memset(set, 0, sizeof(*set));
}

/* ---- the pass ---- */

enum act_kind { ACT_EXPIRE = 0, ACT_SANDBOX, ACT_SNAPSHOT };

struct act {
    enum act_kind kind;
    char *id;       /* thread (expire), sandbox id or object key */
    char *snapshot; /* expire: the snapshot ref (JSON) */
    int64_t age_ms;
};

struct sweep {
    struct event_base *base;
    struct provider *prov;
    sweepq *q;
    struct sweep_opts o;
    char *prefix;
    struct event *timer;
    metric *m_runs, *m_sandboxes, *m_snapshots, *m_expired;
    int listed_before; /* the "cannot list" note is logged once at info */
    /* the pass in flight */
    int busy, dead, freeing;
    struct strset refs, locked;
    struct act *acts;
    size_t nacts, capacts, next;
    int64_t now_ms;
    struct sweep_report rep;
    sweep_done_fn done;
    void *done_arg;
};

static void act_push(sweep *s, enum act_kind kind, const char *id, const char *snapshot,
                     int64_t age_ms)
{
    if (s->nacts == s->capacts) {
        s->capacts = s->capacts ? s->capacts * 2 : 16;
        s->acts = xrealloc(s->acts, s->capacts * sizeof(*s->acts));
    }
    struct act *a = &s->acts[s->nacts++];
    a->kind = kind;
    a->id = xstrdup(id);
    a->snapshot = snapshot ? xstrdup(snapshot) : NULL;
    a->age_ms = age_ms;
}

static void pass_reset(sweep *s)
{
    strset_release(&s->refs);
    strset_release(&s->locked);
    for (size_t i = 0; i < s->nacts; i++) {
        free(s->acts[i].id);
        free(s->acts[i].snapshot);
    }
    free(s->acts);
    s->acts = NULL;
    s->nacts = s->capacts = s->next = 0;
}

static void sweep_destroy(sweep *s)
{
    pass_reset(s);
    if (s->timer)
        event_free(s->timer);
    free(s->prefix);
    free(s);
}

static void count(metric *m, const char *label, unsigned long n)
{
    if (m && n)
        metric_inc(m, label, (double)n);
}

/* Ends the pass (report, metrics, log); frees the sweep when it was freed meanwhile. */
static void pass_end(sweep *s, const char *why)
{
    if (why && !s->rep.err[0])
        snprintf(s->rep.err, sizeof(s->rep.err), "%s", why);
    s->busy = 0;
    if (s->dead) {
        if (!s->freeing)
            sweep_destroy(s);
        return;
    }
    struct sweep_report r = s->rep;
    const char *dry = r.dry_run ? " (dry run: nothing changed)" : "";
    if (r.ran) {
        log_info(NULL,
                 "sweep: %s%lu sandboxes destroyed, %lu snapshots deleted, %lu threads expired; "
                 "%lu young and %lu referenced left alone; %lu failed%s%s%s",
                 r.dry_run ? "would have: " : "", r.destroyed, r.deleted, r.expired, r.young,
                 r.referenced, r.failed, dry, r.err[0] ? "; stopped: " : "", r.err);
        if (s->m_runs)
            metric_inc(s->m_runs, r.err[0] ? "incomplete" : "completed", 1);
    } else if (r.err[0]) {
        log_warn(NULL, "sweep: %s", r.err);
        if (s->m_runs)
            metric_inc(s->m_runs, "failed", 1);
    } else if (s->m_runs) {
        metric_inc(s->m_runs, "skipped", 1);
    }
    const char *done_l = r.dry_run ? "would" : "done";
    count(s->m_sandboxes, done_l, r.destroyed);
    count(s->m_snapshots, done_l, r.deleted);
    count(s->m_expired, done_l, r.expired);
    pass_reset(s);
    sweep_done_fn done = s->done;
    s->done = NULL;
    if (done)
        done(s->done_arg, &r);
}

static void step(sweep *s);

static void failed_step(sweep *s, const struct act *a, const char *err)
{
    static const char *const what[] = {"expire thread", "destroy sandbox", "delete snapshot"};
    log_warn(NULL, "sweep: could not %s %s: %s", what[a->kind], a->id, err ? err : "unknown");
    s->rep.failed++;
    metric *m = a->kind == ACT_EXPIRE    ? s->m_expired
                : a->kind == ACT_SANDBOX ? s->m_sandboxes
                                         : s->m_snapshots;
    count(m, "failed", 1);
}

static void removed(void *arg, int rc, const char *err)
{
    sweep *s = arg;
    if (s->dead) {
        pass_end(s, "stopped");
        return;
    }
    const struct act *a = &s->acts[s->next];
    if (rc != 0 && a->kind == ACT_EXPIRE) {
        log_warn(NULL,
                 "sweep: thread %s expired, but its snapshot could not be deleted (a later sweep "
                 "removes it as an orphan): %s",
                 a->id, err ? err : "unknown");
        s->rep.expired++;
        s->rep.failed++;
    } else if (rc != 0) {
        failed_step(s, a, err);
    } else if (a->kind == ACT_SANDBOX) {
        log_info(NULL, "sweep: destroyed orphan sandbox %s (%lld s old)", a->id,
                 (long long)(a->age_ms / 1000));
        s->rep.destroyed++;
    } else if (a->kind == ACT_SNAPSHOT) {
        log_info(NULL, "sweep: deleted orphan snapshot %s (%lld s old)", a->id,
                 (long long)(a->age_ms / 1000));
        s->rep.deleted++;
    } else {
        log_info(NULL, "sweep: thread %s expired (snapshot %lld s old); its snapshot is deleted",
                 a->id, (long long)(a->age_ms / 1000));
        s->rep.expired++;
    }
    s->next++;
    step(s);
}

static void expired(void *arg, int rc, const char *err)
{
    sweep *s = arg;
    if (s->dead) {
        pass_end(s, "stopped");
        return;
    }
    const struct act *a = &s->acts[s->next];
    if (rc != 1) {
        if (rc < 0)
            failed_step(s, a, err);
        else
            s->rep.referenced++; /* a turn took the thread meanwhile */
        s->next++;
        step(s);
        return;
    }
    /* Marked in Redis first: the snapshot is no longer anyone's, so deleting it now (or a
     * later sweep deleting it, should this fail) loses nothing a thread could resume. */
    cJSON *ref = cJSON_Parse(a->snapshot);
    if (!ref) {
        removed(s, -1, "the snapshot ref is not JSON; left to the orphan sweep");
        return;
    }
    provider_delete_snapshot(s->prov, ref, removed, s);
    cJSON_Delete(ref);
}

static void leased_for_step(void *arg, int rc, const char *err)
{
    sweep *s = arg;
    if (s->dead) {
        pass_end(s, "stopped");
        return;
    }
    if (rc != 1) {
        pass_end(s, rc == 0 ? "the sweep lease passed to another replica" : err);
        return;
    }
    const struct act *a = &s->acts[s->next];
    if (a->kind == ACT_EXPIRE)
        sweepq_expire(s->q, a->id, a->snapshot, s->o.retention_ms, expired, s);
    else
        provider_destroy_by_id(
            s->prov, a->kind == ACT_SANDBOX ? PROVIDER_ITEM_SANDBOX : PROVIDER_ITEM_SNAPSHOT, a->id,
            removed, s);
}

static int64_t lease_ttl(const sweep *s)
{
    return s->o.interval_ms > 0 ? s->o.interval_ms : 60000;
}

/* One destructive step at a time, each under a freshly confirmed lease. */
static void step(sweep *s)
{
    if (s->next >= s->nacts) {
        pass_end(s, NULL);
        return;
    }
    if (s->o.dry_run) {
        for (; s->next < s->nacts; s->next++) {
            const struct act *a = &s->acts[s->next];
            static const char *const what[] = {"expire thread", "destroy orphan sandbox",
                                               "delete orphan snapshot"};
            log_info(NULL, "sweep (dry run): would %s %s (%lld s old)", what[a->kind], a->id,
                     (long long)(a->age_ms / 1000));
            if (a->kind == ACT_SANDBOX)
                s->rep.destroyed++;
            else if (a->kind == ACT_SNAPSHOT)
                s->rep.deleted++;
            else
                s->rep.expired++;
        }
        pass_end(s, NULL);
        return;
    }
    sweepq_lease(s->q, lease_ttl(s), leased_for_step, s);
}

static void listed(void *arg, int rc, const struct provider_item *items, size_t n, const char *err)
{
    sweep *s = arg;
    if (s->dead) {
        pass_end(s, "stopped");
        return;
    }
    if (rc != 0) {
        if (!s->listed_before)
            log_info(NULL, "sweep: no orphan sweep of sandboxes: %s", err ? err : "cannot list");
        else
            log_debug(NULL, "sweep: listing failed: %s", err ? err : "cannot list");
        s->listed_before = 1;
    } else {
        s->rep.listed = 1;
        s->listed_before = 1;
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const struct provider_item *it = &items[i];
        if (!it->id || !*it->id)
            continue;
        if (strset_has(&s->refs, it->id) || (it->thread && strset_has(&s->locked, it->thread))) {
            s->rep.referenced++;
            continue;
        }
        int64_t age = s->now_ms - it->created_ms;
        if (it->created_ms <= 0 || age < s->o.grace_ms) {
            s->rep.young++;
            continue;
        }
        act_push(s, it->kind == PROVIDER_ITEM_SNAPSHOT ? ACT_SNAPSHOT : ACT_SANDBOX, it->id, NULL,
                 age);
    }
    step(s);
}

/* Collects what the thread hashes reference, and the expiry candidates. */
static void threads_page(void *arg, const struct sweepq_thread *rows, size_t n)
{
    sweep *s = arg;
    if (s->dead)
        return;
    for (size_t i = 0; i < n; i++) {
        const struct sweepq_thread *t = &rows[i];
        if (t->locked)
            strset_add(&s->locked, t->id);
        if (strcmp(t->state, "destroyed") == 0 || strcmp(t->state, "expired") == 0)
            continue;
        strset_add(&s->refs, t->sandbox_id);
        cJSON *ref = t->snapshot[0] ? cJSON_Parse(t->snapshot) : NULL;
        for (const cJSON *v = ref ? ref->child : NULL; v; v = v->next)
            if (cJSON_IsString(v) && strcmp(v->string ? v->string : "", "kind") != 0)
                strset_add(&s->refs, v->valuestring);
        cJSON_Delete(ref);
        if (s->o.retention_ms > 0 && !t->locked && strcmp(t->state, "suspended") == 0 &&
            t->snapshot[0] && t->updated_ms > 0)
            act_push(s, ACT_EXPIRE, t->id, t->snapshot, t->updated_ms); /* age set at done */
    }
}

static void threads_done(void *arg, int rc, int64_t now_ms, const char *err)
{
    sweep *s = arg;
    if (s->dead || rc != 0) {
        pass_end(s, s->dead ? "stopped" : err);
        return;
    }
    s->now_ms = now_ms;
    /* Keep the expiry candidates whose snapshot is old enough (the script checks again). */
    size_t k = 0;
    for (size_t i = 0; i < s->nacts; i++) {
        struct act *a = &s->acts[i];
        int64_t age = now_ms - a->age_ms;
        if (age >= s->o.retention_ms) {
            a->age_ms = age;
            s->acts[k++] = *a;
        } else {
            free(a->id);
            free(a->snapshot);
        }
    }
    s->nacts = k;
    provider_list(s->prov, listed, s);
}

static void leased(void *arg, int rc, const char *err)
{
    sweep *s = arg;
    if (s->dead) {
        pass_end(s, "stopped");
        return;
    }
    if (rc != 1) {
        if (rc == 0)
            log_debug(NULL, "sweep: another replica holds the sweep lease");
        pass_end(s, rc < 0 ? err : NULL);
        return;
    }
    s->rep.ran = 1;
    sweepq_threads(s->q, s->o.page_size, threads_page, threads_done, s);
}

int sweep_run(sweep *s, sweep_done_fn done, void *arg)
{
    if (s->busy || s->dead)
        return -1;
    s->busy = 1;
    memset(&s->rep, 0, sizeof(s->rep));
    s->rep.dry_run = s->o.dry_run;
    s->done = done;
    s->done_arg = arg;
    sweepq_lease(s->q, lease_ttl(s), leased, s);
    return 0;
}

int sweep_ready(const sweep *s)
{
    return s->q && sweepq_ready(s->q);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sweep *s = arg;
    if (!s->busy)
        sweep_run(s, NULL, NULL);
}

void sweep_start(sweep *s)
{
    if (s->o.interval_ms <= 0 || s->timer)
        return;
    s->timer = event_new(s->base, -1, EV_PERSIST, timer_cb, s);
    struct timeval tv = {(time_t)(s->o.interval_ms / 1000),
                         (suseconds_t)((s->o.interval_ms % 1000) * 1000)};
    event_add(s->timer, &tv);
}

sweep *sweep_new(struct event_base *base, struct provider *prov, metrics *m,
                 const struct sweep_opts *opts, char *err, size_t errlen)
{
    sweep *s = xcalloc(1, sizeof(*s));
    s->base = base;
    s->prov = prov;
    s->o = *opts;
    s->prefix = xstrdup(opts->prefix);
    s->o.prefix = s->prefix;
    s->o.owner = NULL;
    /* The owner must differ between replicas even when they share a WORKER_NAME. */
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "%s:%08lx%08lx", opts->owner ? opts->owner : "worker",
               (unsigned long)(random() & 0xffffffffUL), (unsigned long)(random() & 0xffffffffUL));
    s->q = sweepq_new(base, &opts->redis, s->prefix, b.data, err, errlen);
    buf_release(&b);
    if (!s->q) {
        sweep_destroy(s);
        return NULL;
    }
    if (m) {
        s->m_runs = metrics_counter(m, "sandbox_sweep_runs_total",
                                    "Sweep passes, by outcome (completed, incomplete, skipped: "
                                    "another replica held the lease, failed)",
                                    "outcome");
        s->m_sandboxes = metrics_counter(m, "sandbox_sweep_sandboxes_total",
                                         "Orphan sandboxes destroyed by the sweep (done), found "
                                         "in dry run (would), or failed",
                                         "result");
        s->m_snapshots = metrics_counter(m, "sandbox_sweep_snapshots_total",
                                         "Orphan snapshot objects deleted by the sweep (done), "
                                         "found in dry run (would), or failed",
                                         "result");
        s->m_expired = metrics_counter(m, "sandbox_sweep_expired_total",
                                       "Threads expired by SANDBOX_SNAPSHOT_RETENTION_MS (done), "
                                       "found in dry run (would), or failed",
                                       "result");
    }
    return s;
}

void sweep_free(sweep *s)
{
    if (!s)
        return;
    s->dead = 1;
    s->freeing = 1;
    if (s->timer) {
        event_free(s->timer);
        s->timer = NULL;
    }
    sweepq_free(s->q); /* a Redis step in flight ends the pass now */
    s->q = NULL;
    s->freeing = 0;
    if (!s->busy)
        sweep_destroy(s);
    /* else a provider step is in flight: its callback ends the pass and frees */
}
