/* One turn: parse → begin (fence, lock the thread) → acquire (create or resume) → steps →
 * suspend or destroy → publish (fenced). Every transition is a callback on the loop; an
 * abort (cancel, deadline, lease lost, shutdown) kills the running step and skips to the
 * suspend so the sandbox never stays up. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "lib/buf.h"
#include "lib/jsonx.h"
#include "lib/log.h"
#include "lib/mask.h"
#include "lib/utf8.h"
#include "worker/job.h"
#include "worker/turn.h"
#include "worker/worker.h"

#define POISON_DELIVERIES 10 /* a turn never begun after this many deliveries is dead */

/* AB_HANDOFF: a draining worker leaves the turn running for a peer (turn_handoff_all). */
enum turn_abort { AB_NONE = 0, AB_CANCEL, AB_TIMEOUT, AB_LEASE, AB_SHUTDOWN, AB_HANDOFF };

enum step_status { SS_PENDING = 0, SS_OK, SS_FAILED, SS_SKIPPED, SS_TIMEOUT, SS_KILLED, SS_ERROR };
static const char *const step_status_names[] = {"pending", "ok",     "failed", "skipped",
                                                "timeout", "killed", "error"};

struct stream_out {
    /* The last `cap` bytes of the masked output (up to 1.25x cap while running), starting on
     * a UTF-8 character when the output is UTF-8. Masked before it is trimmed, so a trim
     * never leaves part of a secret. */
    struct buf tail;
    struct buf pend; /* raw, not yet masked and emitted (held back for split secrets) */
    uint64_t total;  /* raw bytes the stream produced */
    uint64_t quiet;  /* re-attached: raw bytes a previous worker already emitted as events;
                      * they go to the tail again, not to events */
    size_t cap;      /* this step's tail cap: the output cap, less when the result is full */
    size_t budget;   /* bytes of result JSON the tail may take */
    int dropped;     /* masked output was dropped from the front of tail */
};

struct step_result {
    enum step_status status;
    int exit_code;
    int has_exit;
    char *error;
    struct stream_out out[2];
    int64_t duration_ms;
};

struct turn {
    struct turn *next;
    struct worker *w;
    struct queue_delivery *d;
    struct job *job;
    struct mask *mask;
    struct log_ctx lc;
    char job_id[129], thread_id[129];
    int tracked;
    enum turn_abort abort;
    int64_t t_start, t_acquired, t_steps_done, t_finished; /* monotonic ms */
    int64_t t_start_wall;                                  /* for queued_ms */
    int delete_old_snapshot; /* destroy job: the thread's snapshot goes once published */
    int cancel_ignored;      /* a cancel came after the steps: logged once, ignored */
    struct sandbox *sb;
    int resumed;
    char *old_state, *old_snapshot, *old_provider;
    size_t step;
    size_t file; /* write step: the file being written */
    int64_t step_started;
    struct step_result *sr;
    provider_exec *ex;
    char **envv;
    cJSON *files;
    cJSON *uploads;     /* objects stored by upload steps: {key, bytes, sha256, step} */
    const char *status; /* final status when a step decides it */
    char *err_code, *err_msg;
    char *new_snapshot;
    const char *thread_state;
    size_t result_max;  /* WORKER_MAX_RESULT_BYTES */
    size_t result_used; /* reserved + charged so far; <= result_max */
    int finishing;
    struct event *deadline;
    /* Re-attach (DESIGN §5): with a capable provider the job hash records where the running
     * command is (see record_json); a reclaiming worker follows it from there. */
    int can_reattach;
    cJSON *sb_ref;             /* provider_sandbox_ref of t->sb */
    cJSON *handle;             /* the running step's exec handle once known */
    int attached;              /* t->ex follows a command a previous worker started */
    int64_t elapsed0;          /* ms of the turn previous workers had (re-attached) */
    struct event *handle_poll; /* asks for the handle until the provider knows it */
    int handoff;               /* draining: hand the turn off as soon as it can be */
};

/* Durations: monotonic. */
static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wall clock: only to compare with the entry id's time (queued_ms). */
static int64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void set_error(struct turn *t, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int handoff_try(struct turn *t, int boundary);
static void handoff_send(struct turn *t, int started);
static void turn_abort(struct turn *t, enum turn_abort why);
static char *record_json(struct turn *t, size_t ndone, int started, int fin, const char *snapshot);
static void record_write(struct turn *t, size_t ndone, int started, int fin, const char *snapshot,
                         queue_progress_fn cb, void *arg);
static void finish(struct turn *t);

static void set_error(struct turn *t, const char *code, const char *fmt, ...)
{
    if (t->err_code)
        return; /* the first error explains the turn */
    t->err_code = xstrdup(code);
    va_list ap;
    va_start(ap, fmt);
    t->err_msg = xvasprintf(fmt, ap);
    va_end(ap);
}

/* ---- result content and size ---- */

/* Result size accounting (bytes of JSON): what a result holds besides content is reserved
 * up front, per result and per step (name, status, numbers, an error of at most
 * TEXT_MAX bytes, which JSON escaping at most doubles). Content (output tails, read files,
 * upload entries) is charged as it is added. */
#define RESULT_RESERVE      (32 * 1024)
#define RESULT_RESERVE_STEP (3 * 1024)
#define TEXT_MAX            1024 /* an error message in a result, bytes */

/* 1 when data can go into a result as a JSON string: valid UTF-8 without NUL (a C string
 * ends there), and not longer escaped than base64 (text full of control bytes). */
static int content_is_text(const char *data, size_t n)
{
    if (!n)
        return 1;
    return memchr(data, '\0', n) == NULL && utf8_valid(data, n) &&
           utf8_json_len(data, n) <= utf8_base64_json_len(n);
}

/* Bytes of JSON the content takes in a result, quotes included. */
static size_t content_json_len(const char *data, size_t n)
{
    return content_is_text(data, n) ? utf8_json_len(data, n) : utf8_base64_json_len(n);
}

/* o[name] = data as a JSON string, or its base64 when it is not text; returns 1 for
 * base64 (the caller names the encoding). */
static int add_content(cJSON *o, const char *name, const char *data, size_t n)
{
    struct buf b;
    int b64 = !content_is_text(data, n);
    buf_init(&b);
    if (b64)
        jsonx_base64_encode(data, n, &b);
    else
        buf_append(&b, n ? data : "", n);
    cJSON_AddStringToObject(o, name, b.data ? b.data : "");
    buf_release(&b);
    return b64;
}

/* o[name] = a message for people: masked, invalid UTF-8 and control bytes replaced, cut to
 * TEXT_MAX bytes (on a character) with "..." (so it fits the per-step reserve). */
static void add_text(const struct turn *t, cJSON *o, const char *name, const char *s)
{
    struct buf m, b;
    buf_init(&m);
    buf_init(&b);
    mask_apply(t->mask, s, strlen(s), &m);
    for (size_t i = 0; i < m.len && b.len <= TEXT_MAX;) {
        size_t ok = utf8_valid_len(m.data + i, m.len - i);
        for (size_t k = 0; k < ok; k++) {
            unsigned char c = (unsigned char)m.data[i + k];
            buf_putc(&b, c < 0x20 ? ' ' : (char)c);
        }
        i += ok;
        if (i < m.len) {
            buf_putc(&b, '?');
            i++;
        }
    }
    if (b.len > TEXT_MAX) {
        size_t keep = utf8_valid_len(b.data, TEXT_MAX - 3);
        b.len = keep;
        buf_puts(&b, "...");
    }
    cJSON_AddStringToObject(o, name, b.data ? b.data : "");
    buf_release(&m);
    buf_release(&b);
}

static size_t result_left(const struct turn *t)
{
    return t->result_max > t->result_used ? t->result_max - t->result_used : 0;
}

static void result_charge(struct turn *t, size_t n)
{
    t->result_used += n;
}

/* ---- events ---- */

/* How an event is written (see emit_typed). */
enum emit_mode {
    EMIT_PLAIN = 0, /* fire-and-forget, with hash fields when given */
    EMIT_CONFIRM,   /* with hash fields, retried while Redis is away; cb told the outcome */
    EMIT_HANDOFF,   /* as EMIT_CONFIRM, and the entry is handed off (queue_handoff) */
};

/* Every event also carries field "event": its members as one JSON object with their JSON types
 * ("step" and "exit_code" numbers, "resumed" a boolean), except an output event's "data",
 * which stays raw bytes in its own field only. The flat fields stay for older consumers.
 * fields: name/value pairs ending at a NULL name, at most 8 pairs; lens as for queue_event.
 * hash: job hash fields written in the same script (NULL: none). */
static void emit_with(struct turn *t, const char *const *fields, const size_t *lens,
                      const char *const *hash, enum emit_mode mode, queue_progress_fn cb)
{
    const char *f[2 * 8 + 3];
    size_t l[2 * 8 + 2], n = 0;
    cJSON *o = cJSON_CreateObject();
    for (; n < 2 * 8 && fields[n]; n += 2) {
        const char *k = fields[n], *v = fields[n + 1];
        f[n] = k;
        f[n + 1] = v;
        l[n] = lens ? lens[n] : strlen(k);
        l[n + 1] = lens ? lens[n + 1] : strlen(v);
        if (!strcmp(k, "step") || !strcmp(k, "exit_code"))
            cJSON_AddNumberToObject(o, k, strtod(v, NULL));
        else if (!strcmp(k, "resumed"))
            cJSON_AddBoolToObject(o, k, !strcmp(v, "true"));
        else if (strcmp(k, "data") != 0)
            cJSON_AddStringToObject(o, k, v);
    }
    char *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (json) {
        f[n] = "event";
        f[n + 1] = json;
        l[n] = 5;
        l[n + 1] = strlen(json);
        n += 2;
    }
    f[n] = NULL;
    if (mode == EMIT_HANDOFF)
        queue_handoff(t->w->q, t->d->entry, t->d->token, t->job_id, hash, f, l, cb, t);
    else if (mode == EMIT_CONFIRM)
        queue_progress(t->w->q, t->d->entry, t->d->token, t->job_id, hash, f, l, cb, t);
    else if (hash)
        queue_progress(t->w->q, t->d->entry, t->d->token, t->job_id, hash, f, l, NULL, NULL);
    else
        queue_event(t->w->q, t->d->entry, t->d->token, t->job_id, f, l);
    free(json);
}

static void emit_typed(struct turn *t, const char *const *fields, const size_t *lens,
                       const char *const *hash)
{
    emit_with(t, fields, lens, hash, EMIT_PLAIN, NULL);
}

static void emit(struct turn *t, const char *const *fields)
{
    if (!t->job_id[0] || t->abort == AB_LEASE)
        return;
    emit_typed(t, fields, NULL, NULL);
}

/* Cuts tail to its cap, then past a cut UTF-8 character. */
static void tail_trim(struct stream_out *so)
{
    if (so->tail.len <= so->cap)
        return;
    buf_consume(&so->tail, so->tail.len - so->cap);
    buf_consume(&so->tail, utf8_lead_skip(so->tail.data, so->tail.len));
    so->dropped = 1;
}

/* At the end of a step: trims the tail to its cap, then, when its JSON (escaped text, or
 * base64) is over budget, to the bytes whose base64 fits the budget. */
static void tail_fit(struct stream_out *so)
{
    tail_trim(so);
    if (content_json_len(so->tail.data, so->tail.len) <= so->budget)
        return;
    so->cap = so->budget > 8 ? (so->budget - 8) / 4 * 3 : 0;
    tail_trim(so);
}

/* The job hash's "reattach_out": "<step> <stdout bytes> <stderr bytes>", the raw bytes of
 * each stream whose (masked) output is in the events. */
static void out_offsets(const struct turn *t, char *buf, size_t len)
{
    const struct stream_out *o = t->sr[t->step].out;
    snprintf(buf, len, "%zu %llu %llu", t->step, (unsigned long long)(o[0].total - o[0].pend.len),
             (unsigned long long)(o[1].total - o[1].pend.len));
}

static void emit_output(struct turn *t, int si, int final)
{
    struct stream_out *so = &t->sr[t->step].out[si];
    if (!so->pend.len)
        return;
    size_t hold = mask_max_len(t->mask);
    hold = hold ? hold - 1 : 0;
    size_t limit = final ? so->pend.len : (so->pend.len > hold ? so->pend.len - hold : 0);
    while (limit > 0) {
        /* Bytes up to so->quiet were emitted by a previous worker: tail only. */
        uint64_t done = so->total - so->pend.len;
        size_t lim = limit;
        int quiet = done < so->quiet;
        if (quiet && so->quiet - done < lim)
            lim = (size_t)(so->quiet - done);
        struct buf masked;
        buf_init(&masked);
        size_t used = mask_apply_upto(t->mask, so->pend.data, so->pend.len, lim, &masked);
        buf_consume(&so->pend, used);
        limit = used >= limit ? 0 : limit - used;
        buf_append(&so->tail, masked.data, masked.len);
        if (so->tail.len > so->cap + so->cap / 4) /* trim in steps: memory <= 1.25 x cap */
            tail_trim(so);
        if (!quiet && t->job_id[0] && t->abort != AB_LEASE && masked.len) {
            char step[24], offs[80];
            snprintf(step, sizeof(step), "%zu", t->step);
            const char *fields[] = {"type", "output",    "step",
                                    step,   "stream",    si ? "stderr" : "stdout",
                                    "data", masked.data, NULL};
            size_t lens[] = {4, 6, 4, strlen(step), 6, 6, 4, masked.len};
            out_offsets(t, offs, sizeof(offs));
            const char *hash[] = {"reattach_out", offs, NULL};
            emit_typed(t, fields, lens, t->can_reattach ? hash : NULL);
        }
        buf_release(&masked);
    }
}

/* ---- lifecycle ---- */

/* Frees a run step's "NAME=value" list; the values may be secrets, so they are wiped. */
static void free_envv(char **envv)
{
    for (size_t i = 0; envv && envv[i]; i++) {
        volatile char *p = envv[i];
        while (*p)
            *p++ = 0;
        free(envv[i]);
    }
    free(envv);
}

static void turn_free(struct turn *t)
{
    struct worker *w = t->w;
    for (struct turn **p = &w->turns; *p; p = &(*p)->next) {
        if (*p == t) {
            *p = t->next;
            break;
        }
    }
    if (t->tracked)
        queue_untrack(w->q, t->d->entry);
    if (t->deadline)
        event_free(t->deadline);
    if (t->handle_poll)
        event_free(t->handle_poll);
    cJSON_Delete(t->sb_ref);
    cJSON_Delete(t->handle);
    if (t->job) {
        for (size_t i = 0; i < t->job->nsteps && t->sr; i++) {
            free(t->sr[i].error);
            for (int s = 0; s < 2; s++) {
                buf_release(&t->sr[i].out[s].tail);
                buf_release(&t->sr[i].out[s].pend);
            }
        }
        for (size_t i = 0; i < t->job->nsecrets; i++)
            mask_remove(log_mask(), t->job->secrets[i].value);
        for (size_t i = 0; t->job->inherit_env && t->job->inherit_env[i]; i++) {
            const char *v = getenv(t->job->inherit_env[i]);
            if (v)
                mask_remove(log_mask(), v);
        }
    }
    free(t->sr);
    free_envv(t->envv);
    if (t->sb)
        provider_sandbox_release(t->sb);
    cJSON_Delete(t->files);
    cJSON_Delete(t->uploads);
    free(t->old_state);
    free(t->old_snapshot);
    free(t->old_provider);
    free(t->new_snapshot);
    free(t->err_code);
    free(t->err_msg);
    job_free(t->job);
    mask_free(t->mask);
    queue_delivery_free(t->d);
    free(t);
    worker_turn_finished(w);
}

/* ---- publishing ---- */

struct snap_del {
    struct worker *w;
    char *ref;
};

static void snapshot_deleted(void *arg, int rc, const char *err)
{
    struct snap_del *sd = arg;
    if (rc != 0)
        log_warn(NULL, "could not delete previous snapshot %s: %s", sd->ref, err ? err : "");
    else
        log_info(NULL, "deleted previous snapshot %s", sd->ref);
    free(sd->ref);
    free(sd);
}

/* Only QC_PUBLISHED lets the thread move on: until Redis confirms the new snapshot, the
 * thread hash names the old one, which must stay. */
static void published(void *arg, int rc)
{
    struct turn *t = arg;
    struct worker *w = t->w;
    if (rc == QC_FENCED) {
        metric_inc(w->m_fenced, NULL, 1);
        log_warn(&t->lc, "result not published: the lease moved to another worker");
    } else if (rc == QC_DUPLICATE) {
        log_warn(&t->lc, "result not published: job %s already has a result", t->job_id);
    } else if (rc != QC_PUBLISHED) {
        log_warn(&t->lc, "result not confirmed by Redis before shutdown; the entry stays pending");
    } else if (t->old_snapshot && *t->old_snapshot && t->old_provider &&
               strcmp(t->old_provider, provider_name(w->prov)) == 0 &&
               (t->delete_old_snapshot ||
                (t->new_snapshot && strcmp(t->new_snapshot, t->old_snapshot) != 0))) {
        /* The thread has moved on to the new snapshot: the old one can go. */
        cJSON *ref = cJSON_Parse(t->old_snapshot);
        if (ref) {
            struct snap_del *sd = xcalloc(1, sizeof(*sd));
            sd->w = w;
            sd->ref = xstrdup(t->old_snapshot);
            provider_delete_snapshot(w->prov, ref, snapshot_deleted, sd);
            cJSON_Delete(ref);
        }
    }
    turn_free(t);
}

static const char *final_status(const struct turn *t)
{
    switch (t->abort) {
    case AB_CANCEL:
        return "cancelled";
    case AB_TIMEOUT:
        return "timeout";
    case AB_SHUTDOWN:
    case AB_LEASE:
    case AB_HANDOFF:
        return "lost";
    case AB_NONE:
        break;
    }
    return t->status ? t->status : "succeeded";
}

/* The result JSON, masked. slim leaves out output tails and read files: the fallback for a
 * result over WORKER_MAX_RESULT_BYTES, which the accounting should make impossible. */
static char *build_result(struct turn *t, const char *status, int slim)
{
    struct worker *w = t->w;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", t->job_id);
    cJSON_AddStringToObject(r, "thread", t->thread_id);
    cJSON_AddStringToObject(r, "status", status);
    cJSON_AddNumberToObject(r, "attempt", t->d->attempt);
    cJSON_AddStringToObject(r, "worker", w->cfg.worker_name);
    cJSON_AddStringToObject(r, "entry", t->d->entry);
    if (t->err_code) {
        cJSON *e = cJSON_AddObjectToObject(r, "error");
        cJSON_AddStringToObject(e, "code", t->err_code);
        add_text(t, e, "message", t->err_msg);
    }
    if (t->job && t->sr) {
        cJSON *steps = cJSON_AddArrayToObject(r, "steps");
        for (size_t i = 0; i < t->job->nsteps; i++) {
            const struct job_step *js = &t->job->steps[i];
            struct step_result *sr = &t->sr[i];
            cJSON *s = cJSON_CreateObject();
            cJSON_AddStringToObject(s, "name", js->name);
            cJSON_AddStringToObject(s, "type", job_step_kind_name(js->kind));
            cJSON_AddStringToObject(s, "status", step_status_names[sr->status]);
            if (sr->has_exit)
                cJSON_AddNumberToObject(s, "exit_code", sr->exit_code);
            if (sr->error)
                add_text(t, s, "error", sr->error);
            if (js->kind == STEP_RUN && sr->status != SS_PENDING && sr->status != SS_SKIPPED) {
                for (int k = 0; k < 2; k++) {
                    const struct stream_out *so = &sr->out[k];
                    const char *name = k ? "stderr" : "stdout";
                    char field[32];
                    /* The tail is already masked (before it was trimmed). */
                    size_t n = slim ? 0 : so->tail.len;
                    if (add_content(s, name, so->tail.data, n)) {
                        snprintf(field, sizeof(field), "%s_encoding", name);
                        cJSON_AddStringToObject(s, field, "base64");
                    }
                    snprintf(field, sizeof(field), "%s_bytes", name);
                    cJSON_AddNumberToObject(s, field, (double)so->total);
                    if (so->dropped || n < so->tail.len) {
                        snprintf(field, sizeof(field), "%s_truncated", name);
                        cJSON_AddBoolToObject(s, field, 1);
                    }
                }
            }
            cJSON_AddNumberToObject(s, "duration_ms", (double)sr->duration_ms);
            cJSON_AddItemToArray(steps, s);
        }
    }
    /* Referenced, not moved: a slim rebuild may follow. */
    if (!slim && t->files && cJSON_GetArraySize(t->files) > 0)
        cJSON_AddItemReferenceToObject(r, "files", t->files);
    if (t->uploads && cJSON_GetArraySize(t->uploads) > 0)
        cJSON_AddItemReferenceToObject(r, "uploads", t->uploads);
    if (t->thread_state) {
        cJSON *sb = cJSON_AddObjectToObject(r, "sandbox");
        cJSON_AddStringToObject(sb, "provider", provider_name(w->prov));
        cJSON_AddStringToObject(sb, "state", t->thread_state);
        cJSON_AddBoolToObject(sb, "resumed", t->resumed);
        if (t->sb || t->new_snapshot) {
            cJSON *ref = t->new_snapshot ? cJSON_Parse(t->new_snapshot) : NULL;
            if (ref)
                cJSON_AddItemToObject(sb, "snapshot", ref);
        }
    }
    cJSON *tm = cJSON_AddObjectToObject(r, "timings");
    int64_t end = now_ms();
    int64_t start = t->t_start ? t->t_start : end;
    int64_t start_wall = t->t_start_wall ? t->t_start_wall : wall_ms();
    int64_t queued = start_wall - t->d->enqueued_ms;
    cJSON_AddNumberToObject(tm, "queued_ms", (double)(queued > 0 ? queued : 0));
    if (t->t_acquired)
        cJSON_AddNumberToObject(tm, "acquire_ms", (double)(t->t_acquired - start));
    if (t->t_steps_done && t->t_acquired)
        cJSON_AddNumberToObject(tm, "run_ms", (double)(t->t_steps_done - t->t_acquired));
    if (t->t_finished && t->t_steps_done)
        cJSON_AddNumberToObject(tm, "suspend_ms", (double)(t->t_finished - t->t_steps_done));
    cJSON_AddNumberToObject(tm, "total_ms", (double)(end - start));
    char *s = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    char *masked = mask_strdup(t->mask, s);
    free(s);
    if (!slim && strlen(masked) > t->result_max) {
        log_error(&t->lc,
                  "result of %zu bytes over WORKER_MAX_RESULT_BYTES (%zu): published "
                  "without output tails and read files",
                  strlen(masked), t->result_max);
        free(masked);
        return build_result(t, status, 1);
    }
    return masked;
}

/* Publishes the outcome. mode QUEUE_DEAD also writes the dead-letter entry. */
static void publish(struct turn *t, const char *status, enum queue_mode mode,
                    const char *dead_reason)
{
    struct worker *w = t->w;
    if (t->abort == AB_LEASE || t->abort == AB_HANDOFF) {
        log_warn(&t->lc, "turn abandoned: lease lost, nothing published");
        turn_free(t);
        return;
    }
    char *result = build_result(t, status, 0);
    metric_inc(w->m_jobs, status, 1);
    if (t->t_start)
        metric_observe(w->m_turn_seconds, NULL, (double)(now_ms() - t->t_start) / 1000.0);
    log_info(&t->lc, "turn %s%s%s", status, t->err_code ? ": " : "", t->err_code ? t->err_msg : "");
    /* A dead letter is kept and shown to operators: its job text keeps no secret. */
    size_t dead_len = 0;
    char *dead_job = mode == QUEUE_DEAD && t->d->payload
                         ? job_redact_secrets(t->d->payload, t->d->len, &dead_len)
                         : NULL;
    struct queue_completion c = {
        .entry = t->d->entry,
        .token = t->d->token,
        .job_id = t->job_id,
        .thread_id = t->thread_id,
        .status = status,
        .result_json = result,
        .mode = mode,
        .dead_reason = dead_reason,
        .payload = dead_job ? dead_job : t->d->payload,
        .payload_len = dead_job ? dead_len : t->d->len,
        .error_code = t->err_code,
        .update_thread = t->thread_state != NULL,
        .thread_state = t->thread_state,
        .sandbox_id = t->sb ? t->sb->id : "",
        .snapshot_json = t->new_snapshot ? t->new_snapshot : "",
        .provider = provider_name(w->prov),
    };
    queue_complete(w->q, &c, published, t);
    free(result);
    free(dead_job);
}

static void publish_retry_or_dead(struct turn *t)
{
    struct worker *w = t->w;
    int max = t->job && t->job->max_attempts ? t->job->max_attempts : w->cfg.max_attempts;
    if (t->d->attempt >= max) {
        char reason[160];
        snprintf(reason, sizeof(reason), "attempts exhausted (%d of %d): %s", t->d->attempt, max,
                 t->err_code ? t->err_code : "error");
        publish(t, "failed", QUEUE_DEAD, reason);
        return;
    }
    /* Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]. */
    int64_t ceil = w->cfg.retry_base_ms;
    for (int i = 1; i < t->d->attempt && ceil < w->cfg.retry_max_ms; i++)
        ceil *= 2;
    if (ceil > w->cfg.retry_max_ms)
        ceil = w->cfg.retry_max_ms;
    int64_t delay = (int64_t)((double)random() / ((double)RAND_MAX + 1.0) * (double)(ceil + 1));
    char *result = build_result(t, "retrying", 0);
    log_warn(&t->lc, "attempt %d failed (%s); retrying in %lld ms", t->d->attempt,
             t->err_msg ? t->err_msg : "", (long long)delay);
    metric_inc(w->m_retries, NULL, 1); /* not a finished job: it runs again */
    struct queue_completion c = {
        .entry = t->d->entry,
        .token = t->d->token,
        .job_id = t->job_id,
        .thread_id = t->thread_id,
        .status = "retrying",
        .result_json = result,
        .mode = QUEUE_RETRY,
        .retry_delay_ms = delay,
        .next_attempt = t->d->attempt + 1,
        .payload = t->d->payload,
        .payload_len = t->d->len,
        .error_code = t->err_code,
    };
    queue_complete(w->q, &c, published, t);
    free(result);
}

/* ---- finishing: suspend or destroy ---- */

static void finished(struct turn *t)
{
    t->t_finished = now_ms();
    if (t->deadline)
        evtimer_del(t->deadline);
    publish(t, final_status(t), QUEUE_FINAL, NULL);
}

/* After a failed suspend of a tar-based sandbox: the sandbox is gone, and the thread keeps
 * its previous snapshot (still intact in the object store), so the next turn resumes it. */
static void destroyed_after_failed_suspend(void *arg, int rc, const char *err)
{
    struct turn *t = arg;
    if (rc != 0)
        log_warn(&t->lc, "could not remove the sandbox after the failed suspend: %s",
                 err ? err : "unknown error");
    int had = t->old_snapshot && *t->old_snapshot && t->old_state &&
              strcmp(t->old_state, "suspended") == 0;
    t->thread_state = had ? "suspended" : "destroyed";
    t->new_snapshot = had ? xstrdup(t->old_snapshot) : NULL;
    finished(t);
}

/* Steps whose results are final: up to the current one once it has ended. */
static size_t steps_done(const struct turn *t)
{
    return t->step < t->job->nsteps && t->sr && t->sr[t->step].status != SS_PENDING ? t->step + 1
                                                                                    : t->step;
}

static void suspended(void *arg, int rc, const cJSON *ref, const char *err)
{
    struct turn *t = arg;
    if (rc == 0 && ref) {
        t->new_snapshot = cJSON_PrintUnformatted(ref);
        t->thread_state = "suspended";
        if (t->can_reattach && t->sb_ref) {
            /* A worker that takes over from here finds the sandbox gone: the record tells it
             * the snapshot. Written before the completion, on the same connection. */
            record_write(t, steps_done(t), 0, 1, t->new_snapshot, NULL, NULL);
        }
        finished(t);
        return;
    }
    log_error(&t->lc, "suspend failed: %s", err ? err : "unknown error");
    set_error(t, "suspend_failed", "suspend failed: %s", err ? err : "unknown error");
    if (!t->status)
        t->status = "failed";
    if (!(provider_caps(t->w->prov) & PROVIDER_CAP_NATIVE_SUSPEND)) {
        provider_destroy(t->sb, destroyed_after_failed_suspend, t);
        return;
    }
    /* A native suspend failed: the sandbox may still hold the state; leave it for the
     * provider's own idle policy and let the next turn start fresh. */
    t->thread_state = "suspend_failed";
    finished(t);
}

static void destroyed(void *arg, int rc, const char *err)
{
    struct turn *t = arg;
    if (rc != 0) {
        set_error(t, "destroy_failed", "destroy failed: %s", err ? err : "unknown error");
        if (!t->status)
            t->status = "failed";
    }
    t->thread_state = "destroyed";
    finished(t);
}

static void finish_sandbox(struct turn *t)
{
    if (t->job->after == JOB_AFTER_DESTROY)
        provider_destroy(t->sb, destroyed, t);
    else
        provider_suspend(t->sb, suspended, t);
}

static void fin_recorded(void *arg, int rc)
{
    struct turn *t = arg;
    if (rc == 0) { /* fenced: another worker owns the turn now and finishes it */
        t->abort = AB_LEASE;
        finished(t);
        return;
    }
    if (rc != 1)
        log_warn(&t->lc, "the finishing record was not written; suspending anyway");
    finish_sandbox(t);
}

static void finish(struct turn *t)
{
    if (t->finishing)
        return;
    t->finishing = 1;
    t->t_steps_done = now_ms();
    if (t->handle_poll)
        evtimer_del(t->handle_poll);
    /* Lease lost with a re-attachable command: the new owner follows it in this sandbox,
     * so it is left running. */
    if (!t->sb ||
        ((t->abort == AB_LEASE || t->abort == AB_HANDOFF) && t->can_reattach && t->sb_ref)) {
        finished(t);
        return;
    }
    if (t->can_reattach && t->sb_ref && t->abort != AB_LEASE) {
        /* Recorded before the sandbox goes: a worker that takes over while it is being
         * suspended or destroyed finishes the turn instead of reporting it lost. */
        record_write(t, steps_done(t), 0, 1, NULL, fin_recorded, t);
        return;
    }
    finish_sandbox(t);
}

/* ---- steps ---- */

static void next_step(struct turn *t);

static void step_done(struct turn *t, enum step_status st)
{
    struct step_result *sr = &t->sr[t->step];
    const struct job_step *js = &t->job->steps[t->step];
    sr->status = st;
    sr->duration_ms = now_ms() - t->step_started;
    metric_observe(t->w->m_step_seconds, job_step_kind_name(js->kind),
                   (double)sr->duration_ms / 1000.0);
    char step[24], code[24];
    snprintf(step, sizeof(step), "%zu", t->step);
    snprintf(code, sizeof(code), "%d", sr->exit_code);
    const char *fields[] = {"type",
                            "step_finished",
                            "step",
                            step,
                            "name",
                            js->name,
                            "status",
                            step_status_names[st],
                            sr->has_exit ? "exit_code" : NULL,
                            code,
                            NULL};
    emit(t, fields);
    int failed = (st == SS_FAILED && !js->allow_failure) || st == SS_ERROR || st == SS_TIMEOUT ||
                 st == SS_KILLED;
    if (failed && !t->abort) {
        if (st == SS_TIMEOUT) {
            t->status = "timeout";
            set_error(t, "step_timeout", "step %s timed out", js->name);
        } else if (st == SS_FAILED) {
            t->status = "failed";
            set_error(t, "step_failed", "step %s exited with status %d", js->name, sr->exit_code);
        } else {
            t->status = "failed";
            set_error(t, "step_error", "step %s: %s", js->name, sr->error ? sr->error : "error");
        }
    }
    if (failed || t->abort) {
        finish(t);
        return;
    }
    t->step++;
    next_step(t);
}

/* Ends the current step as failed with a one-line reason (printf-style). */
static void step_error(struct turn *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void step_error(struct turn *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    free(t->sr[t->step].error);
    t->sr[t->step].error = msg;
    step_done(t, SS_ERROR);
}

static void record_handle(struct turn *t);

static void on_output(void *arg, enum exec_stream stream, const char *data, size_t len)
{
    struct turn *t = arg;
    int si = stream == EXEC_STDERR;
    struct stream_out *so = &t->sr[t->step].out[si];
    if (t->can_reattach && !t->handle && t->ex)
        record_handle(t); /* the handle is in Redis before any output event */
    so->total += len;
    buf_append(&so->pend, data, len);
    emit_output(t, si, 0);
}

static void reattach_lost(struct turn *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void on_exec_exit(void *arg, enum exec_status status, int exit_code, const char *err)
{
    struct turn *t = arg;
    struct step_result *sr = &t->sr[t->step];
    int attached = t->attached;
    t->ex = NULL;
    t->attached = 0;
    if (t->handle_poll)
        evtimer_del(t->handle_poll);
    if (t->abort == AB_HANDOFF) {
        if (status == EXEC_ERROR) {
            /* Detached: output held back for masking stays unpublished; the peer sends it
             * from the offsets in Redis. */
            handoff_send(t, 1);
            return;
        }
        t->abort = AB_NONE; /* it ended meanwhile: the hand-off waits for the next step */
    }
    for (int s = 0; s < 2; s++) {
        emit_output(t, s, 1);
        tail_fit(&sr->out[s]);
        result_charge(t, content_json_len(sr->out[s].tail.data, sr->out[s].tail.len));
    }
    switch (status) {
    case EXEC_EXITED:
        sr->has_exit = 1;
        sr->exit_code = exit_code;
        step_done(t, exit_code == 0 ? SS_OK : SS_FAILED);
        return;
    case EXEC_TIMEOUT:
        step_done(t, SS_TIMEOUT);
        return;
    case EXEC_KILLED:
        step_done(t, SS_KILLED);
        return;
    case EXEC_ERROR:
        if (attached && !t->abort) {
            /* Re-attached and the provider lost the command: its end is unknown. */
            reattach_lost(t, "step %s: %s", t->job->steps[t->step].name,
                          err ? err : "provider error");
            return;
        }
        sr->error = xstrdup(err ? err : "provider error");
        step_done(t, SS_ERROR);
        return;
    }
}

static void file_written(void *arg, int rc, const char *err);

static void write_next_file(struct turn *t)
{
    const struct job_step *js = &t->job->steps[t->step];
    if (t->file >= js->nfiles) {
        step_done(t, SS_OK);
        return;
    }
    const struct job_file *f = &js->files[t->file];
    provider_write_file(t->sb, f->path, f->data, f->len, f->mode, file_written, t);
}

static void file_written(void *arg, int rc, const char *err)
{
    struct turn *t = arg;
    if (rc != 0) {
        step_error(t, "writing %s: %s", t->job->steps[t->step].files[t->file].path,
                   err ? err : "error");
        return;
    }
    if (t->abort) {
        step_done(t, SS_KILLED);
        return;
    }
    t->file++;
    write_next_file(t);
}

static void file_read(void *arg, int rc, const char *data, size_t len, const char *err)
{
    struct turn *t = arg;
    const struct job_step *js = &t->job->steps[t->step];
    if (rc != 0) {
        step_error(t, "reading %s: %s", js->path, err ? err : "error");
        return;
    }
    size_t max = js->max_bytes ? js->max_bytes : t->w->cfg.read_cap_bytes;
    size_t n = len > max ? max : len;
    struct buf masked;
    buf_init(&masked);
    mask_apply(t->mask, data, n, &masked);
    /* The entry: content, path, step name and the other members. */
    size_t need = content_json_len(masked.data, masked.len) +
                  utf8_json_len(js->path, strlen(js->path)) +
                  utf8_json_len(js->name, strlen(js->name)) + 96;
    if (need > result_left(t)) {
        buf_release(&masked);
        step_error(t,
                   "result size limit: the %zu bytes read from %s need %zu bytes of the result, "
                   "%zu are left (WORKER_MAX_RESULT_BYTES %zu)",
                   n, js->path, need, result_left(t), t->result_max);
        return;
    }
    result_charge(t, need);
    if (!t->files)
        t->files = cJSON_CreateArray();
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "path", js->path);
    cJSON_AddStringToObject(f, "step", js->name);
    cJSON_AddStringToObject(f, "encoding",
                            content_is_text(masked.data, masked.len) ? "utf8" : "base64");
    add_content(f, "content", masked.data, masked.len);
    buf_release(&masked);
    cJSON_AddNumberToObject(f, "bytes", (double)n);
    if (len > max)
        cJSON_AddBoolToObject(f, "truncated", 1);
    cJSON_AddItemToArray(t->files, f);
    step_done(t, SS_OK);
}

static void uploaded(void *arg, int rc, uint64_t bytes, const char *sha256_hex, const char *err)
{
    struct turn *t = arg;
    const struct job_step *js = &t->job->steps[t->step];
    if (rc != 0) {
        step_error(t, "uploading to %s: %s", js->key, err ? err : "error");
        return;
    }
    if (!t->uploads)
        t->uploads = cJSON_CreateArray();
    cJSON *u = cJSON_CreateObject();
    cJSON_AddStringToObject(u, "key", js->key);
    cJSON_AddNumberToObject(u, "bytes", (double)bytes);
    cJSON_AddStringToObject(u, "sha256", sha256_hex ? sha256_hex : "");
    cJSON_AddStringToObject(u, "step", js->name);
    cJSON_AddItemToArray(t->uploads, u);
    step_done(t, SS_OK); /* stored either way; an abort is acted on there */
}

static void restored(void *arg, int rc, const char *err)
{
    struct turn *t = arg;
    if (rc != 0) {
        const struct job_step *js = &t->job->steps[t->step];
        step_error(t, "restoring %s into %s: %s", js->key, js->dest, err ? err : "error");
        return;
    }
    step_done(t, SS_OK);
}

static void build_env(struct turn *t, const struct job_step *js)
{
    free_envv(t->envv);
    size_t n = t->job->nsecrets + js->nenv + 1;
    for (size_t i = 0; t->job->inherit_env && t->job->inherit_env[i]; i++)
        n++;
    t->envv = xcalloc(n, sizeof(char *));
    size_t k = 0;
    struct buf b;
    for (size_t i = 0; t->job->inherit_env && t->job->inherit_env[i]; i++) {
        const char *v = getenv(t->job->inherit_env[i]);
        if (!v)
            continue;
        buf_init(&b);
        buf_printf(&b, "%s=%s", t->job->inherit_env[i], v);
        t->envv[k++] = buf_detach(&b);
    }
    for (size_t i = 0; i < t->job->nsecrets; i++) {
        buf_init(&b);
        buf_printf(&b, "%s=%s", t->job->secrets[i].name, t->job->secrets[i].value);
        t->envv[k++] = buf_detach(&b);
    }
    for (size_t i = 0; i < js->nenv; i++) {
        buf_init(&b);
        buf_printf(&b, "%s=%s", js->env[i].name, js->env[i].value);
        t->envv[k++] = buf_detach(&b);
    }
}

/* ---- re-attach records ----
 * Job hash field "reattach" (written when a step starts, again once a run's handle is
 * known, at a hand-off, and before the sandbox is suspended or destroyed): {"v":1,
 * "provider", "sandbox": ref, "resumed", "step": index, "started": whether that step may have
 * begun (false at a hand-off between steps), "handle": the run's handle or null, "steps": the
 * results of the steps before it, "files", "uploads", "used", "elapsed", and while finishing
 * "fin": {"status", "code", "msg"} plus, once suspended, "snapshot": the new ref}.
 * "reattach_out" (written with each output event): see out_offsets. Both hold masked text
 * only. A step starts only once its record is confirmed, so a reclaiming worker never runs a
 * command a previous worker may have started. */

static double rec_num(const cJSON *o, const char *name, double dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static const char *rec_str(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The error text is masked here: the record is stored like a result. */
static cJSON *step_to_json(const struct turn *t, const struct step_result *sr)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "st", sr->status);
    cJSON_AddNumberToObject(o, "ec", sr->exit_code);
    cJSON_AddBoolToObject(o, "he", sr->has_exit);
    if (sr->error) {
        char *m = mask_strdup(t->mask, sr->error);
        cJSON_AddStringToObject(o, "err", m);
        free(m);
    }
    cJSON_AddNumberToObject(o, "dur", (double)sr->duration_ms);
    cJSON *outs = cJSON_AddArrayToObject(o, "o");
    for (int k = 0; k < 2; k++) {
        const struct stream_out *so = &sr->out[k];
        cJSON *x = cJSON_CreateObject();
        struct buf b;
        buf_init(&b);
        if (so->tail.len)
            jsonx_base64_encode(so->tail.data, so->tail.len, &b);
        cJSON_AddStringToObject(x, "t", b.len ? b.data : "");
        buf_release(&b);
        cJSON_AddNumberToObject(x, "n", (double)so->total);
        cJSON_AddBoolToObject(x, "d", so->dropped);
        cJSON_AddItemToArray(outs, x);
    }
    return o;
}

static int step_from_json(const cJSON *o, struct step_result *sr)
{
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "st");
    const cJSON *outs = cJSON_GetObjectItemCaseSensitive(o, "o");
    if (!cJSON_IsNumber(st) || st->valueint < SS_PENDING || st->valueint > SS_ERROR ||
        cJSON_GetArraySize(outs) != 2)
        return -1;
    sr->status = (enum step_status)st->valueint;
    sr->exit_code = (int)rec_num(o, "ec", 0);
    sr->has_exit = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "he"));
    const char *err = rec_str(o, "err");
    sr->error = err ? xstrdup(err) : NULL;
    sr->duration_ms = (int64_t)rec_num(o, "dur", 0);
    for (int k = 0; k < 2; k++) {
        const cJSON *x = cJSON_GetArrayItem(outs, k);
        const char *tail = rec_str(x, "t");
        if (!tail || jsonx_base64_decode(tail, strlen(tail), &sr->out[k].tail) != 0)
            return -1;
        sr->out[k].total = (uint64_t)rec_num(x, "n", 0);
        sr->out[k].dropped = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(x, "d"));
    }
    return 0;
}

/* ndone: the steps whose results the record holds (also its "step"). fin: finishing (the
 * turn's status and error so far); snapshot: the new snapshot ref once suspended, or NULL. */
static char *record_json(struct turn *t, size_t ndone, int started, int fin, const char *snapshot)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddNumberToObject(r, "v", 1);
    cJSON_AddStringToObject(r, "provider", provider_name(t->w->prov));
    cJSON_AddItemToObject(r, "sandbox", cJSON_Duplicate(t->sb_ref, 1));
    cJSON_AddBoolToObject(r, "resumed", t->resumed);
    cJSON_AddNumberToObject(r, "step", (double)ndone);
    cJSON_AddBoolToObject(r, "started", started);
    cJSON_AddItemToObject(
        r, "handle", started && t->handle ? cJSON_Duplicate(t->handle, 1) : cJSON_CreateNull());
    cJSON *steps = cJSON_AddArrayToObject(r, "steps");
    for (size_t i = 0; i < ndone; i++)
        cJSON_AddItemToArray(steps, step_to_json(t, &t->sr[i]));
    if (fin) {
        cJSON *f = cJSON_AddObjectToObject(r, "fin");
        cJSON_AddStringToObject(f, "status", final_status(t));
        if (t->err_code) {
            char *m = mask_strdup(t->mask, t->err_msg ? t->err_msg : "");
            cJSON_AddStringToObject(f, "code", t->err_code);
            cJSON_AddStringToObject(f, "msg", m);
            free(m);
        }
        if (snapshot)
            cJSON_AddItemToObject(r, "snapshot", cJSON_Parse(snapshot));
    }
    if (t->files)
        cJSON_AddItemToObject(r, "files", cJSON_Duplicate(t->files, 1));
    if (t->uploads)
        cJSON_AddItemToObject(r, "uploads", cJSON_Duplicate(t->uploads, 1));
    cJSON_AddNumberToObject(r, "used", (double)t->result_used);
    /* Time the turn has had so far (ms): a re-attached turn gets what is left of its
     * deadline (less the time since this record, which it cannot know). */
    cJSON_AddNumberToObject(r, "elapsed", (double)(t->elapsed0 + now_ms() - t->t_start));
    char *s = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    return s;
}

/* Writes the record (record_json) to the job hash: fenced, fire-and-forget without cb, else
 * retried while Redis is away and cb told the outcome (queue_progress). */
static void record_write(struct turn *t, size_t ndone, int started, int fin, const char *snapshot,
                         queue_progress_fn cb, void *arg)
{
    char *rec = record_json(t, ndone, started, fin, snapshot);
    const char *hash[] = {"reattach", rec, NULL};
    queue_progress(t->w->q, t->d->entry, t->d->token, t->job_id, hash, NULL, NULL, cb, arg);
    free(rec);
}

static void handle_poll_cb(evutil_socket_t fd, short what, void *arg);

static void handle_recorded(void *arg, int rc)
{
    (void)arg;
    (void)rc; /* fenced or failed: the turn learns that through its lease */
}

/* Records the running command's handle once the provider knows it (polled every 100 ms). */
static void record_handle(struct turn *t)
{
    if (!t->ex || t->abort || !t->sb_ref)
        return; /* without a reference nothing can follow the command: no handle needed */
    cJSON *h = provider_exec_handle(t->sb, t->ex);
    if (!h) {
        if (!t->handle_poll)
            t->handle_poll = evtimer_new(t->w->base, handle_poll_cb, t);
        struct timeval tv = {0, 100 * 1000};
        evtimer_add(t->handle_poll, &tv);
        return;
    }
    cJSON_Delete(t->handle);
    t->handle = h;
    /* With a callback the write is retried while Redis is away (the callback must not
     * touch the turn, which may be gone by then). */
    record_write(t, t->step, 1, 0, NULL, handle_recorded, NULL);
    handoff_try(t, 0);
}

static void handle_poll_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    record_handle(arg);
}

/* ---- hand-off: a draining worker leaves its turns running for its peers ----
 * At the end of the shutdown grace every turn that can be re-attached is handed off as soon
 * as it can be: a running command once its handle is known (detached: it keeps running), a
 * turn between steps before the next one starts. One script writes the record and the
 * "handed_off" event and releases the entry (queue_handoff): a peer's next reclaim takes it
 * and re-attaches. Writes, reads, uploads and restores in flight end first; a finishing turn
 * (suspend or destroy, then publish) finishes. */

static void turn_free(struct turn *t);

static void handed_off(void *arg, int rc)
{
    struct turn *t = arg;
    if (rc == 1) {
        log_info(&t->lc,
                 "turn handed off at step %zu; its sandbox %s keeps running for the worker "
                 "that re-attaches",
                 t->step, t->sb ? t->sb->id : "");
        metric_inc(t->w->m_jobs, "handed_off", 1);
    } else if (rc == 0) {
        log_warn(&t->lc, "hand-off not written: the entry is no longer ours");
    } else {
        log_warn(&t->lc, "hand-off not confirmed by Redis; a peer re-attaches after the lease");
    }
    turn_free(t);
}

/* started: step t->step is running (detached from it); 0: it has not begun. */
static void handoff_send(struct turn *t, int started)
{
    if (t->deadline)
        evtimer_del(t->deadline);
    if (t->handle_poll)
        evtimer_del(t->handle_poll);
    char *rec = record_json(t, t->step, started, 0, NULL);
    char step[24];
    snprintf(step, sizeof(step), "%zu", t->step);
    const char *hash[] = {"reattach", rec, NULL};
    const char *f[] = {"type", "handed_off", "step", step, "worker", t->w->cfg.worker_name, NULL};
    emit_with(t, f, NULL, hash, EMIT_HANDOFF, handed_off);
    free(rec);
}

/* Hands the turn off if it is wanted and possible now. boundary: called between steps.
 * Returns 1 when the caller must not go on with the turn: it was handed off, or (between
 * steps) it cannot be found again by a peer and is finishing as interrupted. */
static int handoff_try(struct turn *t, int boundary)
{
    if (!t->handoff || t->abort || t->finishing || !t->sb)
        return 0;
    if (!t->sb_ref) {
        set_error(t, "worker_shutdown",
                  "the worker shut down before the turn finished (its "
                  "sandbox cannot be found again by another worker)");
        turn_abort(t, AB_SHUTDOWN); /* a running step ends killed, then the turn finishes */
        if (!boundary)
            return 0;
        finish(t);
        return 1;
    }
    if (t->ex) {
        if (!t->handle)
            return 0; /* record_handle calls again once the provider knows it */
        t->abort = AB_HANDOFF;
        provider_exec_detach(t->sb, t->ex); /* on_exec_exit sends the hand-off */
        return 1;
    }
    if (!boundary)
        return 0; /* a write, read, upload or restore in flight: at its end */
    t->abort = AB_HANDOFF;
    handoff_send(t, 0);
    return 1;
}

void turn_handoff_all(struct worker *w)
{
    for (struct turn *t = w->turns; t; t = t->next) {
        if (t->abort || t->handoff)
            continue;
        if (!t->can_reattach) {
            set_error(t, "worker_shutdown", "the worker shut down before the turn finished");
            turn_abort(t, AB_SHUTDOWN);
            continue;
        }
        t->handoff = 1;
        handoff_try(t, 0);
    }
}

static void run_step(struct turn *t);

static void step_recorded(void *arg, int rc)
{
    struct turn *t = arg;
    if (rc == 0) {
        /* Fenced: another worker owns the entry now and may re-attach; leave it all. */
        turn_abort(t, AB_LEASE);
        step_done(t, SS_KILLED);
        return;
    }
    if (rc != 1) {
        step_error(t, "could not record the step's progress in Redis");
        return;
    }
    if (t->abort) {
        step_done(t, SS_KILLED);
        return;
    }
    run_step(t);
}

/* Sets each stream's caps for a run step: each tail may take half of what the result has
 * left, as many bytes while it runs (text), fewer at the end if its JSON is longer (see
 * tail_fit). */
static void run_caps(struct turn *t, struct step_result *sr)
{
    size_t half = result_left(t) / 2;
    for (int k = 0; k < 2; k++) {
        sr->out[k].budget = half;
        size_t text = half > 2 ? half - 2 : 0; /* less the quotes */
        sr->out[k].cap = text < t->w->cfg.output_cap_bytes ? text : t->w->cfg.output_cap_bytes;
    }
}

static void start_step(struct turn *t)
{
    const struct job_step *js = &t->job->steps[t->step];
    t->step_started = now_ms();
    char step[24];
    snprintf(step, sizeof(step), "%zu", t->step);
    if (!t->can_reattach || t->abort == AB_LEASE) {
        const char *fields[] = {"type", "step_started", "step", step,
                                "name", js->name,       "kind", job_step_kind_name(js->kind),
                                NULL};
        emit(t, fields);
        run_step(t);
        return;
    }
    if (handoff_try(t, 1))
        return;
    cJSON_Delete(t->handle);
    t->handle = NULL;
    char *rec = record_json(t, t->step, 1, 0, NULL);
    char offs[64];
    snprintf(offs, sizeof(offs), "%zu 0 0", t->step);
    const char *hash[] = {"reattach", rec, "reattach_out", offs, NULL};
    const char *f[] = {"type", "step_started", "step", step,
                       "name", js->name,       "kind", job_step_kind_name(js->kind),
                       NULL};
    emit_with(t, f, NULL, hash, EMIT_CONFIRM, step_recorded);
    free(rec);
}

/* Starts the current run step's command. With re-attach it is tagged "<job>/<step>": a backend
 * that keeps tags starts it at most once, so a worker that takes over a step whose handle was
 * never recorded starts it again with tag_required (following the first command when there
 * is one; refused by a backend that cannot). */
static provider_exec *run_exec(struct turn *t, int tag_required, char *err, size_t errlen)
{
    const struct job_step *js = &t->job->steps[t->step];
    build_env(t, js);
    char tag[160];
    snprintf(tag, sizeof(tag), "%s/%zu", t->job_id, t->step);
    struct exec_req req = {
        .cmd = js->cmd,
        .cwd = js->cwd,
        .env = (const char *const *)t->envv,
        .timeout_ms = js->timeout_ms ? js->timeout_ms : t->w->cfg.step_timeout_ms,
        .tag = t->can_reattach && t->sb_ref ? tag : NULL,
        .tag_required = tag_required,
    };
    struct exec_cbs cbs = {on_output, on_exec_exit, t};
    return provider_exec_start(t->sb, &req, &cbs, err, errlen);
}

/* Does the step start_step announced (and, with re-attach, recorded). */
static void run_step(struct turn *t)
{
    const struct job_step *js = &t->job->steps[t->step];
    struct step_result *sr = &t->sr[t->step];
    switch (js->kind) {
    case STEP_WRITE:
        t->file = 0;
        write_next_file(t);
        return;
    case STEP_READ: {
        size_t max = js->max_bytes ? js->max_bytes : t->w->cfg.read_cap_bytes;
        provider_read_file(t->sb, js->path, max + 1, file_read, t);
        return;
    }
    case STEP_RUN: {
        run_caps(t, sr);
        char err[256] = "";
        t->ex = run_exec(t, 0, err, sizeof(err));
        if (!t->ex) {
            sr->error = xstrdup(err[0] ? err : "exec failed");
            step_done(t, SS_ERROR);
            return;
        }
        if (t->can_reattach)
            record_handle(t);
        return;
    }
    case STEP_UPLOAD:
    case STEP_RESTORE:
        if (js->kind == STEP_UPLOAD) {
            /* The uploads entry: key, step name, a sha256 and numbers. Checked before
             * anything is stored. */
            size_t need = utf8_json_len(js->key, strlen(js->key)) +
                          utf8_json_len(js->name, strlen(js->name)) + 160;
            if (need > result_left(t)) {
                step_error(t,
                           "result size limit: no room left in the result for the upload "
                           "(WORKER_MAX_RESULT_BYTES %zu)",
                           t->result_max);
                return;
            }
            result_charge(t, need);
        }
        if (js->kind == STEP_UPLOAD)
            provider_archive_upload(t->sb, (const char *const *)js->paths, js->key, uploaded, t);
        else
            provider_archive_restore(t->sb, js->key, js->dest, restored, t);
        return;
    }
}

static void next_step(struct turn *t)
{
    while (t->step < t->job->nsteps && !t->abort) {
        const struct job_step *js = &t->job->steps[t->step];
        int skip = (js->when == STEP_WHEN_FRESH && t->resumed) ||
                   (js->when == STEP_WHEN_RESUMED && !t->resumed);
        if (!skip) {
            start_step(t);
            return;
        }
        t->sr[t->step].status = SS_SKIPPED;
        t->step++;
    }
    finish(t);
}

/* ---- aborts ---- */

static void turn_abort(struct turn *t, enum turn_abort why)
{
    if (t->abort)
        return;
    t->abort = why;
    if (t->ex && why == AB_LEASE && t->can_reattach && t->sb_ref)
        provider_exec_detach(t->sb, t->ex); /* the new owner re-attaches */
    else if (t->ex)
        provider_exec_kill(t->sb, t->ex);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct turn *t = arg;
    log_warn(&t->lc, "turn deadline reached");
    set_error(t, "deadline", "the turn exceeded its deadline");
    turn_abort(t, AB_TIMEOUT);
}

static struct turn *find_turn(struct worker *w, const char *entry)
{
    for (struct turn *t = w->turns; t; t = t->next)
        if (strcmp(t->d->entry, entry) == 0)
            return t;
    return NULL;
}

void turn_lease_lost(struct worker *w, const char *entry)
{
    struct turn *t = find_turn(w, entry);
    if (t)
        turn_abort(t, AB_LEASE);
}

void turn_cancel_entry(struct worker *w, const char *entry)
{
    struct turn *t = find_turn(w, entry);
    if (t && t->finishing) {
        if (!t->cancel_ignored)
            log_info(&t->lc, "cancel requested after the steps finished; the turn's result stands");
        t->cancel_ignored = 1; /* the cancel key is seen again at every renewal */
        return;
    }
    if (t && !t->abort) {
        log_info(&t->lc, "cancel requested");
        set_error(t, "cancelled", "cancelled by the producer");
        turn_abort(t, AB_CANCEL);
    }
}

/* ---- acquire ---- */

static void acquired(void *arg, struct sandbox *sb, const char *err)
{
    struct turn *t = arg;
    t->t_acquired = now_ms();
    if (!sb) {
        set_error(t, "acquire_failed", "could not %s the sandbox: %s",
                  t->resumed ? "resume" : "create", err ? err : "unknown error");
        if (t->abort) {
            finished(t);
            return;
        }
        t->thread_state = NULL;
        publish_retry_or_dead(t);
        return;
    }
    t->sb = sb;
    log_info(&t->lc, "sandbox %s %s", sb->id, t->resumed ? "resumed" : "created");
    if (t->can_reattach) {
        /* Without a reference the records still say a step started (so the turn is lost,
         * never run again), but nothing is left running for a new owner. */
        t->sb_ref = provider_sandbox_ref(sb);
        if (!t->sb_ref)
            log_warn(&t->lc, "sandbox %s cannot be found again; this turn cannot be re-attached",
                     sb->id);
    }
    const char *fields[] = {
        "type", "started", "sandbox", sb->id, "resumed", t->resumed ? "true" : "false", NULL};
    emit(t, fields);
    t->sr = xcalloc(t->job->nsteps ? t->job->nsteps : 1, sizeof(*t->sr));
    next_step(t);
}

/* elapsed: ms of the budget a previous worker already used. */
static void arm_deadline(struct turn *t, int64_t elapsed)
{
    struct worker *w = t->w;
    int64_t budget = t->job->deadline_ms ? t->job->deadline_ms : w->cfg.turn_timeout_ms;
    budget = elapsed < budget ? budget - elapsed : 0;
    t->deadline = evtimer_new(w->base, deadline_cb, t);
    struct timeval tv = {(time_t)(budget / 1000), (suseconds_t)((budget % 1000) * 1000)};
    evtimer_add(t->deadline, &tv);
}

static void sandbox_spec_of(struct turn *t, struct sandbox_spec *spec)
{
    memset(spec, 0, sizeof(*spec));
    spec->thread = t->thread_id;
    spec->job = t->job_id;
    spec->worker = t->w->cfg.worker_name;
    spec->organization = t->job->organization;
    spec->project = t->job->project;
    spec->feature =
        t->job->feature == JOB_FEATURE_AI_WRITEBACK ? SANDBOX_AI_WRITEBACK : SANDBOX_DATA_APP;
    spec->workspace_include = (const char *const *)t->job->ws_include;
    spec->workspace_exclude = (const char *const *)t->job->ws_exclude;
}

static void acquire(struct turn *t)
{
    struct worker *w = t->w;
    arm_deadline(t, 0);
    int has_snapshot = t->old_snapshot && *t->old_snapshot && t->old_state &&
                       strcmp(t->old_state, "suspended") == 0 && t->old_provider &&
                       strcmp(t->old_provider, provider_name(w->prov)) == 0;
    if (t->job->op == JOB_OP_DESTROY) {
        /* The thread is marked destroyed first; its snapshot is deleted only once Redis
         * confirmed that (published), so a failed publish leaves a resumable thread. */
        t->sr = xcalloc(1, sizeof(*t->sr));
        t->t_acquired = now_ms();
        t->delete_old_snapshot = has_snapshot;
        t->thread_state = "destroyed";
        finish(t);
        return;
    }
    if (t->old_state && strcmp(t->old_state, "expired") == 0) {
        /* The sweep deleted the thread's snapshot (SANDBOX_SNAPSHOT_RETENTION_MS): nothing
         * to resume, and starting afresh would silently lose the conversation. The thread
         * stays expired until a destroy job resets it. */
        set_error(t, "expired",
                  "thread %s expired: its snapshot was older than the retention and was deleted; "
                  "send a destroy job for the thread to start it afresh",
                  t->thread_id);
        t->status = "failed";
        t->t_acquired = now_ms();
        finish(t);
        return;
    }
    struct sandbox_spec spec;
    sandbox_spec_of(t, &spec);
    cJSON *ref = has_snapshot ? cJSON_Parse(t->old_snapshot) : NULL;
    if (ref) {
        t->resumed = 1;
        provider_resume(w->prov, &spec, ref, acquired, t);
        cJSON_Delete(ref);
    } else {
        provider_create(w->prov, &spec, acquired, t);
    }
}

/* ---- re-attach: a reclaimed turn that a previous worker started ---- */

/* The turn cannot go on: reported lost; sandbox and thread left as they are (below). */
static void reattach_lost(struct turn *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *why = xvasprintf(fmt, ap);
    va_end(ap);
    log_warn(&t->lc, "turn lost: %s", why);
    set_error(t, "worker_lost",
              "a previous delivery started this turn and its worker stopped renewing the lease; "
              "re-attaching failed: %s",
              why);
    free(why);
    metric_inc(t->w->m_jobs, "reattach_failed", 1);
    t->status = "lost";
    if (!t->sr)
        t->sr = xcalloc(t->job->nsteps ? t->job->nsteps : 1, sizeof(*t->sr));
    /* The sandbox and the thread are left as they are: a sandbox found under the old name may
     * not be the turn's (a fresh session, say), so suspending it could replace the thread's
     * snapshot with the wrong state. The thread keeps its previous snapshot. */
    t->finishing = 1;
    t->t_steps_done = now_ms();
    finished(t);
}

struct reattach_ctx {
    struct turn *t;
    cJSON *rec;
    uint64_t published[2]; /* raw bytes per stream already in the events */
    int started;           /* the record's step may have begun */
    int fin;               /* the previous worker was finishing (suspend or destroy) */
};

/* The previous worker was suspending or destroying the sandbox, which is gone now: a destroy
 * did what the turn wanted; a suspend did too if its snapshot was recorded. */
static void fin_gone(struct turn *t, const cJSON *rec, const char *err)
{
    const cJSON *snap = cJSON_GetObjectItemCaseSensitive(rec, "snapshot");
    if (t->job->after != JOB_AFTER_DESTROY && !cJSON_IsObject(snap)) {
        reattach_lost(t,
                      "the sandbox was being suspended when its worker stopped and the snapshot "
                      "it made is not known (%s)",
                      err ? err : "sandbox gone");
        return;
    }
    log_info(&t->lc, "the previous worker had %s the sandbox; publishing its result",
             cJSON_IsObject(snap) ? "suspended" : "destroyed");
    t->finishing = 1;
    t->t_steps_done = now_ms();
    if (cJSON_IsObject(snap)) {
        t->new_snapshot = cJSON_PrintUnformatted(snap);
        t->thread_state = "suspended";
    } else {
        t->thread_state = "destroyed";
    }
    finished(t);
}

static void reattached(void *arg, struct sandbox *sb, const char *err)
{
    struct reattach_ctx *rc = arg;
    struct turn *t = rc->t;
    t->t_acquired = now_ms();
    if (!sb && rc->fin) {
        fin_gone(t, rc->rec, err);
        goto out;
    }
    if (!sb) {
        reattach_lost(t, "the sandbox is gone: %s", err ? err : "unknown error");
        goto out;
    }
    t->sb = sb;
    log_info(&t->lc, "sandbox %s reconnected; re-attaching at step %zu", sb->id, t->step);
    char step[24];
    snprintf(step, sizeof(step), "%zu", t->step);
    const char *fields[] = {"type", "reattached", "sandbox", sb->id, "step", step, NULL};
    emit(t, fields);
    if (t->abort || rc->fin) {
        finish(t);
        goto out;
    }
    if (!rc->started || t->step >= t->job->nsteps || t->job->steps[t->step].kind != STEP_RUN) {
        /* Handed off between steps: the next one starts here. Writes, reads, uploads and
         * restores are done again; none runs a command. */
        next_step(t);
        goto out;
    }
    const struct job_step *js = &t->job->steps[t->step];
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(rc->rec, "handle");
    struct step_result *sr = &t->sr[t->step];
    run_caps(t, sr);
    t->step_started = now_ms();
    char e[256] = "";
    int from = 1;
    if (cJSON_IsObject(h)) {
        struct exec_cbs cbs = {on_output, on_exec_exit, t};
        t->handle = cJSON_Duplicate(h, 1);
        /* From the start when the provider replays: the tail is rebuilt, the events are not
         * written again (quiet). */
        from = 0;
        t->ex = provider_exec_attach(sb, h, 0, &cbs, &from, e, sizeof(e));
    } else {
        /* The command may have started before its handle reached Redis: started again by its
         * tag, it runs once and replays from its first byte. */
        t->ex = run_exec(t, 1, e, sizeof(e));
        if (!t->ex) {
            reattach_lost(t,
                          "step %s may have started its command, whose handle was not "
                          "recorded, and the provider cannot start it at most once (%s)",
                          js->name, e[0] ? e : "no tags");
            goto out;
        }
    }
    t->attached = t->ex != NULL;
    if (!t->ex) {
        reattach_lost(t, "step %s: %s", js->name, e[0] ? e : "cannot re-attach");
        goto out;
    }
    for (int k = 0; k < 2; k++) {
        struct stream_out *so = &sr->out[k];
        if (from) {
            so->quiet = rc->published[k];
        } else { /* output from now on only: what came before is not in the tail */
            so->total = rc->published[k];
            so->dropped = rc->published[k] > 0;
        }
    }
    metric_inc(t->w->m_jobs, "reattached", 1);
    if (!t->handle)
        record_handle(t); /* also hands off when this worker is draining */
    else
        handoff_try(t, 0); /* this worker may be draining too */
out:
    cJSON_Delete(rc->rec);
    free(rc);
}

/* A record's "fin": the status and error the previous worker had. 0, or -1 when malformed. */
static int fin_restore(struct turn *t, const cJSON *fin)
{
    static const char *const names[] = {"succeeded", "failed", "timeout", "cancelled", "lost"};
    const char *st = rec_str(fin, "status");
    const char *code = rec_str(fin, "code"), *msg = rec_str(fin, "msg");
    size_t i = 0;
    while (st && i < sizeof(names) / sizeof(names[0]) && strcmp(st, names[i]) != 0)
        i++;
    if (!st || i == sizeof(names) / sizeof(names[0]))
        return -1;
    t->status = i == 0 ? NULL : names[i];
    if (code)
        set_error(t, code, "%s", msg ? msg : "");
    return 0;
}

/* "reattach_out": "<step> <stdout bytes> <stderr bytes>" (out_offsets). 0, or -1 when it
 * is not three decimal numbers. */
static int parse_offsets(const char *s, unsigned long long out[3])
{
    for (int i = 0; i < 3; i++) {
        char *end;
        errno = 0;
        if (*s < '0' || *s > '9')
            return -1;
        out[i] = strtoull(s, &end, 10);
        if (errno || (i < 2 && *end != ' ') || (i == 2 && *end))
            return -1;
        s = end + (i < 2);
    }
    return 0;
}

static void reattach(struct turn *t, const struct queue_thread *th)
{
    struct worker *w = t->w;
    cJSON *rec = th->reattach ? cJSON_Parse(th->reattach) : NULL;
    const char *prov = rec_str(rec, "provider");
    double step = rec_num(rec, "step", -2);
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(rec, "steps");
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(rec, "sandbox");
    if (rec && step == -1 && !ref && !steps) {
        /* The previous worker began the turn and stopped before its first step started:
         * nothing ran, so the turn starts afresh (a sandbox it may have created is left to
         * the provider's idle policy). */
        cJSON_Delete(rec);
        log_info(&t->lc, "no step had started; the turn starts afresh");
        acquire(t);
        return;
    }
    double elapsed = rec_num(rec, "elapsed", 0);
    t->elapsed0 = elapsed > 0 && elapsed < 1e12 ? (int64_t)elapsed : 0;
    arm_deadline(t, t->elapsed0);
    t->sr = xcalloc(t->job->nsteps ? t->job->nsteps : 1, sizeof(*t->sr));
    if (rec && step >= 0 && prov && !cJSON_IsObject(ref)) {
        cJSON_Delete(rec);
        reattach_lost(t, "the sandbox could not be found again (the provider gave no reference)");
        return;
    }
    /* "started" missing: written by an older worker, whose steps had always begun */
    int started = !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(rec, "started"));
    const cJSON *fin = cJSON_GetObjectItemCaseSensitive(rec, "fin");
    if (!rec || !prov || !cJSON_IsObject(ref) || !cJSON_IsArray(steps) || step < 0 ||
        (size_t)step > t->job->nsteps || (size_t)cJSON_GetArraySize(steps) != (size_t)step ||
        ((size_t)step == t->job->nsteps && started) || (fin && !cJSON_IsObject(fin)) ||
        (fin && fin_restore(t, fin) != 0)) {
        cJSON_Delete(rec);
        reattach_lost(t, "the job's re-attach record is malformed");
        return;
    }
    if (strcmp(prov, provider_name(w->prov)) != 0 || !t->can_reattach) {
        reattach_lost(t, "it was started with provider %s, this worker runs %s", prov,
                      provider_name(w->prov));
        cJSON_Delete(rec);
        return;
    }
    t->step = (size_t)step;
    t->resumed = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rec, "resumed"));
    for (size_t i = 0; i < t->step; i++) {
        if (step_from_json(cJSON_GetArrayItem(steps, (int)i), &t->sr[i]) != 0) {
            cJSON_Delete(rec);
            reattach_lost(t, "the job's re-attach record is malformed (step %zu)", i);
            return;
        }
    }
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(rec, "files");
    const cJSON *uploads = cJSON_GetObjectItemCaseSensitive(rec, "uploads");
    if (cJSON_IsArray(files))
        t->files = cJSON_Duplicate(files, 1);
    if (cJSON_IsArray(uploads))
        t->uploads = cJSON_Duplicate(uploads, 1);
    double used = rec_num(rec, "used", 0);
    if (used > (double)t->result_used && used <= (double)t->result_max)
        t->result_used = (size_t)used;
    t->sb_ref = cJSON_Duplicate(ref, 1);
    struct reattach_ctx *rc = xcalloc(1, sizeof(*rc));
    rc->t = t;
    rc->rec = rec;
    rc->started = started;
    rc->fin = fin != NULL;
    unsigned long long offs[3];
    if (th->reattach_out && parse_offsets(th->reattach_out, offs) == 0 && offs[0] == t->step) {
        rc->published[0] = offs[1];
        rc->published[1] = offs[2];
    }
    struct sandbox_spec spec;
    sandbox_spec_of(t, &spec);
    provider_reconnect(w->prov, &spec, ref, reattached, rc);
}

/* ---- begin ---- */

static void begun(void *arg, enum queue_begin_status st, const struct queue_thread *th)
{
    struct turn *t = arg;
    switch (st) {
    case QB_OK:
        t->t_start = now_ms();
        t->t_start_wall = wall_ms();
        t->old_state = th->state ? xstrdup(th->state) : NULL;
        t->old_snapshot = th->snapshot ? xstrdup(th->snapshot) : NULL;
        t->old_provider = th->provider ? xstrdup(th->provider) : NULL;
        if (t->abort) {
            /* Cancelled, lease lost or shutting down while the begin script ran. */
            finished(t);
            return;
        }
        acquire(t);
        return;
    case QB_FENCED:
        log_warn(&t->lc, "entry %s is no longer ours; dropped", t->d->entry);
        metric_inc(t->w->m_fenced, NULL, 1);
        turn_free(t);
        return;
    case QB_DUPLICATE:
        log_info(&t->lc, "duplicate delivery of job %s; acknowledged without running", t->job_id);
        metric_inc(t->w->m_duplicates, NULL, 1);
        turn_free(t);
        return;
    case QB_BUSY:
        log_debug(&t->lc, "thread busy; job parked until the running turn completes");
        turn_free(t);
        return;
    case QB_CANCELLED:
        set_error(t, "cancelled", "cancelled before it started");
        publish(t, "cancelled", QUEUE_FINAL, NULL);
        return;
    case QB_REATTACH:
        t->t_start = now_ms();
        t->t_start_wall = wall_ms();
        t->old_state = th->state ? xstrdup(th->state) : NULL;
        t->old_snapshot = th->snapshot ? xstrdup(th->snapshot) : NULL;
        t->old_provider = th->provider ? xstrdup(th->provider) : NULL;
        log_info(&t->lc, "taking over a started turn from a previous delivery");
        reattach(t, th);
        return;
    case QB_STARTED:
        set_error(t, "worker_lost",
                  "a previous delivery started this turn and its worker stopped renewing the "
                  "lease; the turn is not run again");
        publish(t, "lost", QUEUE_FINAL, NULL);
        return;
    case QB_TENANT:
        set_error(t, "tenant_mismatch", "tenant: thread %s belongs to another tenant",
                  t->thread_id);
        publish(t, "rejected", QUEUE_DEAD, "tenant: the thread belongs to another tenant");
        return;
    case QB_ERROR:
        set_error(t, "internal", "the begin script failed (see the worker log)");
        publish(t, "failed", QUEUE_FINAL, NULL);
        return;
    }
}

void turn_start(struct worker *w, struct queue_delivery *d)
{
    struct turn *t = xcalloc(1, sizeof(*t));
    t->w = w;
    t->d = d;
    t->mask = mask_new();
    t->next = w->turns;
    w->turns = t;
    t->lc.job = t->job_id;
    t->lc.thread = t->thread_id;
    t->can_reattach = provider_can_reattach(w->prov);
    metric_inc(w->m_deliveries, NULL, 1);

    const char *payload = d->payload ? d->payload : "";
    struct job_limits lim = {
        .max_job_bytes = w->cfg.max_job_bytes,
        .max_deadline_ms = w->cfg.turn_timeout_ms,
        .inherit_allow = (const char *const *)w->cfg.inherit_env_allow,
        .read_cap_bytes = w->cfg.read_cap_bytes,
        .max_result_bytes = w->cfg.max_result_bytes,
    };
    t->result_max = w->cfg.max_result_bytes;
    t->result_used = RESULT_RESERVE;
    struct job_error jerr;
    memset(&jerr, 0, sizeof(jerr));
    if (!d->payload) {
        snprintf(jerr.field, sizeof(jerr.field), "job");
        snprintf(jerr.message, sizeof(jerr.message), "the stream entry has no \"job\" field");
    }
    if (!d->payload || job_parse(payload, d->len, &lim, &t->job, &jerr) != 0) {
        /* Recorded under its stream entry only: an id read from an invalid document is not
         * known to be the sender's, so no job hash, events or thread are touched (another
         * job may own that id). job_id stays "" for the completion. */
        char claimed[129], claimed_thread[129];
        job_peek_ids(payload, d->len, claimed, sizeof(claimed), claimed_thread,
                     sizeof(claimed_thread));
        queue_track(w->q, d->entry, "");
        t->tracked = 1;
        char reason[420];
        snprintf(reason, sizeof(reason), "%s%s%s", jerr.field, jerr.field[0] ? ": " : "",
                 jerr.message);
        log_warn(&t->lc, "rejected entry %s%s%s%s: %s", d->entry, claimed[0] ? " (id " : "",
                 claimed, claimed[0] ? ")" : "", reason);
        set_error(t, "invalid_job", "%s", reason);
        publish(t, "rejected", QUEUE_DEAD, reason);
        return;
    }
    snprintf(t->job_id, sizeof(t->job_id), "%s", t->job->id);
    snprintf(t->thread_id, sizeof(t->thread_id), "%s", t->job->thread);
    t->result_used += t->job->nsteps * RESULT_RESERVE_STEP;
    queue_track(w->q, d->entry, t->job_id);
    t->tracked = 1;
    for (size_t i = 0; i < t->job->nsecrets; i++) {
        mask_add(t->mask, t->job->secrets[i].value);
        mask_add(log_mask(), t->job->secrets[i].value);
    }
    for (size_t i = 0; t->job->inherit_env && t->job->inherit_env[i]; i++) {
        const char *v = getenv(t->job->inherit_env[i]);
        if (v) {
            mask_add(t->mask, v);
            mask_add(log_mask(), v);
        }
    }
    /* A hand-off is a delivery no worker failed: it does not count towards poison. */
    if (d->token > POISON_DELIVERIES && !d->handed_off) {
        char reason[128];
        snprintf(reason, sizeof(reason), "delivered %lld times without completing", d->token);
        set_error(t, "poison", "%s", reason);
        publish(t, "failed", QUEUE_DEAD, reason);
        return;
    }
    log_debug(&t->lc, "entry %s delivery %lld attempt %d", d->entry, d->token, d->attempt);
    struct queue_begin_req req = {
        .entry = d->entry,
        .token = d->token,
        .job_id = t->job_id,
        .thread_id = t->thread_id,
        .organization = t->job->organization,
        .project = t->job->project,
        .payload = d->payload,
        .payload_len = d->len,
        .attempt = d->attempt,
        .order = d->order,
        .can_reattach = t->can_reattach,
    };
    queue_begin(w->q, &req, begun, t);
}
