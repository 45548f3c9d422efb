#include "providers/provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/buf.h"
#include "providers/azure_sessions.h"
#include "providers/docker.h"
#include "providers/e2b.h"
#include "providers/lambda_microvm.h"

#define REGISTRY_MAX 16

/* Built-in backends are added here as they land. */
static const struct provider_ops *registry[REGISTRY_MAX] = {
    &e2b_provider_ops, &lambda_microvm_provider_ops, &azure_sessions_provider_ops,
    &docker_provider_ops};

static int provider_complete(const struct provider_ops *o)
{
    return o->name && o->create && o->resume && o->exec && o->exec_kill && o->write_file &&
           o->read_file && o->suspend && o->destroy && o->release;
}

int provider_register(const struct provider_ops *ops)
{
    if (!provider_complete(ops))
        return -1;
    for (int i = 0; i < REGISTRY_MAX; i++) {
        if (registry[i] == ops)
            return 0;
        if (!registry[i]) {
            registry[i] = ops;
            return 0;
        }
    }
    return -1;
}

const struct provider_ops *provider_find(const char *name)
{
    for (int i = 0; i < REGISTRY_MAX && registry[i]; i++)
        if (strcmp(registry[i]->name, name) == 0)
            return registry[i];
    return NULL;
}

const char *provider_names(void)
{
    static char names[256];
    size_t off = 0;
    names[0] = '\0';
    for (int i = 0; i < REGISTRY_MAX && registry[i]; i++)
        off += (size_t)snprintf(names + off, sizeof(names) - off, "%s%s", i ? ", " : "",
                                registry[i]->name);
    return off ? names : "(none)";
}

struct provider *provider_new(const struct provider_ops *ops, struct event_base *base,
                              const struct provider_settings *settings, int check_only, char *err,
                              size_t errlen)
{
    if (!provider_complete(ops)) {
        snprintf(err, errlen, "provider %s: ops table lacks a required op",
                 ops->name ? ops->name : "(unnamed)");
        return NULL;
    }
    struct provider *p = xcalloc(1, sizeof(*p));
    p->ops = ops;
    p->base = base;
    if (settings)
        p->settings = *settings;
    p->priv = ops->priv_size ? xcalloc(1, ops->priv_size) : NULL;
    if (ops->init && ops->init(p, check_only, err, errlen) != 0) {
        if (ops->cleanup)
            ops->cleanup(p);
        free(p->priv);
        free(p);
        return NULL;
    }
    return p;
}

void provider_free(struct provider *p)
{
    if (!p)
        return;
    if (p->ops->cleanup)
        p->ops->cleanup(p);
    free(p->priv);
    free(p);
}

const char *provider_name(const struct provider *p)
{
    return p->ops->name;
}

unsigned provider_caps(const struct provider *p)
{
    return p->ops->caps;
}

/* ---- timing of control-plane operations (provider_set_observer) ---- */

struct timed {
    provider_observe_fn observe; /* copied at start: the provider may be gone at the end */
    void *observe_arg;
    const char *op; /* static */
    struct timespec t0;
    provider_sandbox_fn sandbox_cb;
    provider_ref_fn ref_cb;
    provider_done_fn done_cb;
    void *arg;
};

void provider_set_observer(struct provider *p, provider_observe_fn fn, void *arg)
{
    p->observe = fn;
    p->observe_arg = arg;
}

static struct timed *timed_new(const struct provider *p, const char *op, void *arg)
{
    struct timed *t = xcalloc(1, sizeof(*t));
    t->observe = p->observe;
    t->observe_arg = p->observe_arg;
    t->op = op;
    t->arg = arg;
    clock_gettime(CLOCK_MONOTONIC, &t->t0);
    return t;
}

static void timed_report(const struct timed *t, const char *err)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double s = (double)(now.tv_sec - t->t0.tv_sec) + (double)(now.tv_nsec - t->t0.tv_nsec) / 1e9;
    t->observe(t->observe_arg, t->op, s, err);
}

static void timed_sandbox(void *arg, struct sandbox *sb, const char *err)
{
    struct timed *t = arg;
    timed_report(t, sb ? NULL : (err && *err ? err : "failed"));
    t->sandbox_cb(t->arg, sb, err);
    free(t);
}

static void timed_ref(void *arg, int rc, const cJSON *ref, const char *err)
{
    struct timed *t = arg;
    timed_report(t, rc == 0 ? NULL : (err && *err ? err : "failed"));
    t->ref_cb(t->arg, rc, ref, err);
    free(t);
}

static void timed_done(void *arg, int rc, const char *err)
{
    struct timed *t = arg;
    timed_report(t, rc == 0 ? NULL : (err && *err ? err : "failed"));
    t->done_cb(t->arg, rc, err);
    free(t);
}

void provider_create(struct provider *p, const struct sandbox_spec *spec, provider_sandbox_fn done,
                     void *arg)
{
    if (p->observe && done) {
        struct timed *t = timed_new(p, "create", arg);
        t->sandbox_cb = done;
        p->ops->create(p, spec, timed_sandbox, t);
        return;
    }
    p->ops->create(p, spec, done, arg);
}

void provider_resume(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                     provider_sandbox_fn done, void *arg)
{
    if (p->observe && done) {
        struct timed *t = timed_new(p, "resume", arg);
        t->sandbox_cb = done;
        p->ops->resume(p, spec, ref, timed_sandbox, t);
        return;
    }
    p->ops->resume(p, spec, ref, done, arg);
}

provider_exec *provider_exec_start(struct sandbox *sb, const struct exec_req *req,
                                   const struct exec_cbs *cbs, char *err, size_t errlen)
{
    return sb->prov->ops->exec(sb, req, cbs, err, errlen);
}

void provider_exec_kill(struct sandbox *sb, provider_exec *ex)
{
    sb->prov->ops->exec_kill(ex);
}

void provider_write_file(struct sandbox *sb, const char *path, const char *data, size_t len,
                         int mode, provider_done_fn done, void *arg)
{
    sb->prov->ops->write_file(sb, path, data, len, mode, done, arg);
}

void provider_read_file(struct sandbox *sb, const char *path, size_t max, provider_data_fn done,
                        void *arg)
{
    sb->prov->ops->read_file(sb, path, max, done, arg);
}

void provider_suspend(struct sandbox *sb, provider_ref_fn done, void *arg)
{
    if (sb->prov->observe && done) {
        struct timed *t = timed_new(sb->prov, "suspend", arg);
        t->ref_cb = done;
        sb->prov->ops->suspend(sb, timed_ref, t);
        return;
    }
    sb->prov->ops->suspend(sb, done, arg);
}

void provider_destroy(struct sandbox *sb, provider_done_fn done, void *arg)
{
    if (sb->prov->observe && done) {
        struct timed *t = timed_new(sb->prov, "destroy", arg);
        t->done_cb = done;
        sb->prov->ops->destroy(sb, timed_done, t);
        return;
    }
    sb->prov->ops->destroy(sb, done, arg);
}

/* ---- defaults of the optional ops: report once, from the loop ---- */

struct provider_deferred {
    provider_done_fn done;
    provider_sandbox_fn sandbox;
    provider_upload_fn uploaded;
    provider_list_fn listed;
    void *arg;
    int rc;
    char err[256];
};

static void provider_deferred_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct provider_deferred *d = arg;
    if (d->uploaded)
        d->uploaded(d->arg, d->rc, 0, NULL, d->err);
    else if (d->listed)
        d->listed(d->arg, d->rc, NULL, 0, d->err);
    else if (d->sandbox)
        d->sandbox(d->arg, NULL, d->err);
    else
        d->done(d->arg, d->rc, d->rc == 0 ? NULL : d->err);
    free(d);
}

static void provider_defer(struct provider *p, struct provider_deferred *d)
{
    if (event_base_once(p->base, -1, EV_TIMEOUT, provider_deferred_cb, d, NULL) != 0) {
        /* Out of memory in libevent: report now rather than never. */
        provider_deferred_cb(-1, 0, d);
    }
}

static void provider_no_store(struct sandbox *sb, provider_done_fn done, provider_upload_fn up,
                              void *arg)
{
    struct provider_deferred *d = xcalloc(1, sizeof(*d));
    d->done = done;
    d->uploaded = up;
    d->arg = arg;
    d->rc = -1;
    snprintf(d->err, sizeof(d->err),
             "the %s provider cannot archive: upload and restore steps need a provider with an "
             "object store",
             sb->prov->ops->name);
    provider_defer(sb->prov, d);
}

void provider_delete_snapshot(struct provider *p, const cJSON *ref, provider_done_fn done,
                              void *arg)
{
    if (p->ops->delete_snapshot) {
        p->ops->delete_snapshot(p, ref, done, arg);
        return;
    }
    struct provider_deferred *d = xcalloc(1, sizeof(*d));
    d->done = done;
    d->arg = arg;
    provider_defer(p, d);
}

void provider_archive_upload(struct sandbox *sb, const char *const *paths, const char *key,
                             provider_upload_fn done, void *arg)
{
    if (sb->prov->ops->archive_upload)
        sb->prov->ops->archive_upload(sb, paths, key, done, arg);
    else
        provider_no_store(sb, NULL, done, arg);
}

void provider_archive_restore(struct sandbox *sb, const char *key, const char *dest,
                              provider_done_fn done, void *arg)
{
    if (sb->prov->ops->archive_restore)
        sb->prov->ops->archive_restore(sb, key, dest, done, arg);
    else
        provider_no_store(sb, done, NULL, arg);
}

static void provider_no_list(struct provider *p, provider_done_fn done, provider_list_fn listed,
                             void *arg)
{
    struct provider_deferred *d = xcalloc(1, sizeof(*d));
    d->done = done;
    d->listed = listed;
    d->arg = arg;
    d->rc = -1;
    snprintf(d->err, sizeof(d->err), "the %s provider cannot list its sandboxes", p->ops->name);
    provider_defer(p, d);
}

void provider_list(struct provider *p, provider_list_fn done, void *arg)
{
    if (p->ops->list)
        p->ops->list(p, done, arg);
    else
        provider_no_list(p, NULL, done, arg);
}

void provider_destroy_by_id(struct provider *p, enum provider_item_kind kind, const char *id,
                            provider_done_fn done, void *arg)
{
    if (p->ops->destroy_by_id)
        p->ops->destroy_by_id(p, kind, id, done, arg);
    else
        provider_no_list(p, done, NULL, arg);
}

void provider_sandbox_release(struct sandbox *sb)
{
    if (sb)
        sb->prov->ops->release(sb);
}

/* ---- re-attach ---- */

int provider_can_reattach(const struct provider *p)
{
    const struct provider_ops *o = p->ops;
    return (o->caps & PROVIDER_CAP_REATTACH) && o->sandbox_ref && o->reconnect && o->exec_handle &&
           o->exec_attach;
}

cJSON *provider_sandbox_ref(struct sandbox *sb)
{
    return sb->prov->ops->sandbox_ref ? sb->prov->ops->sandbox_ref(sb) : NULL;
}

void provider_reconnect(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                        provider_sandbox_fn done, void *arg)
{
    if (p->ops->reconnect) {
        p->ops->reconnect(p, spec, ref, done, arg);
        return;
    }
    struct provider_deferred *d = xcalloc(1, sizeof(*d));
    d->sandbox = done;
    d->arg = arg;
    d->rc = -1;
    snprintf(d->err, sizeof(d->err), "the %s provider cannot reconnect to a sandbox", p->ops->name);
    provider_defer(p, d);
}

cJSON *provider_exec_handle(struct sandbox *sb, provider_exec *ex)
{
    return sb->prov->ops->exec_handle ? sb->prov->ops->exec_handle(ex) : NULL;
}

provider_exec *provider_exec_attach(struct sandbox *sb, const cJSON *handle, uint64_t offset,
                                    const struct exec_cbs *cbs, int *from_offset, char *err,
                                    size_t errlen)
{
    *from_offset = 0;
    if (!sb->prov->ops->exec_attach) {
        snprintf(err, errlen, "the %s provider cannot re-attach to a command", sb->prov->ops->name);
        return NULL;
    }
    return sb->prov->ops->exec_attach(sb, handle, offset, cbs, from_offset, err, errlen);
}

void provider_exec_detach(struct sandbox *sb, provider_exec *ex)
{
    if (sb->prov->ops->exec_detach)
        sb->prov->ops->exec_detach(ex);
    else
        sb->prov->ops->exec_kill(ex);
}
