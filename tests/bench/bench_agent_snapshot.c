/* Snapshot throughput through the agent path (numbers only, never pass/fail): a real
 * sandbox-agent on a unix socket archives a workspace (POST /archive/out), the worker's
 * agent_client streams it into the object store (objstore, backpressure end to end) — the
 * data path of the lambda-microvm, azure-container-sessions and (with its agent) docker
 * backends. Each run is compared with `tar -c | zstd -3 -T1 >/dev/null` on the same tree, and
 * this process's peak RSS growth is printed (the worker's cost: the target is < 64 MB).
 *
 * Variants: the agent compresses (zstd, stored as is) or the worker does (agent sends a plain
 * tar, objstore compresses with zstd); into the local folder store and into S3 (s3rver, when it
 * can run). Then the restore (object → agent archive in) of the first variant.
 * BENCH_SNAPSHOT_MB (default 1024) sizes the workspace: half random bytes, half text. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/buf.h"
#include "providers/agent_client.h"
#include "providers/objstore.h"
#include "tests/support/s3_fixture.h"

static struct event_base *g_base;

static double now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static long maxrss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static void run_until(const int *flag, double seconds)
{
    double end = now_s() + seconds;
    while (!*flag && now_s() < end)
        event_base_loop(g_base, EVLOOP_ONCE);
}

/* ---- agent archive out → objstore writer ---- */

struct pipe_out {
    agent_op *op;
    objstore_writer *w;
    int blocked, done, rc;
    uint64_t stored;
    char err[400];
};

static int out_sink(void *arg, const char *data, size_t len)
{
    struct pipe_out *p = arg;
    if (p->blocked)
        return AGENT_IO_BLOCK;
    int r = objstore_write(p->w, data, len);
    if (r == OBJSTORE_ERROR)
        return AGENT_IO_ERROR;
    p->blocked = r == OBJSTORE_BLOCKED;
    return AGENT_IO_OK;
}

static void out_drain(void *arg)
{
    struct pipe_out *p = arg;
    p->blocked = 0;
    if (p->op)
        agent_op_drain(p->op);
}

static void out_written(void *arg, int rc, uint64_t bytes, const char *sha, const char *err)
{
    (void)sha;
    struct pipe_out *p = arg;
    p->w = NULL;
    p->rc = rc;
    p->stored = bytes;
    if (err)
        snprintf(p->err, sizeof(p->err), "%s", err);
    p->done = 1;
}

static void out_agent_done(void *arg, int rc, const char *err)
{
    struct pipe_out *p = arg;
    p->op = NULL;
    if (rc != 0) {
        snprintf(p->err, sizeof(p->err), "archive out: %s", err ? err : "failed");
        if (p->w)
            objstore_writer_abort(p->w);
        p->w = NULL;
        p->rc = -1;
        p->done = 1;
        return;
    }
    objstore_writer_finish(p->w);
}

/* ---- objstore reader → agent archive in ---- */

struct pipe_in {
    agent_op *op;
    objstore_reader *r;
    struct buf pend;
    size_t off;
    int paused, waiting, read_done, read_rc, done, rc;
    char err[400];
};

static int in_sink(void *arg, const char *p, size_t n)
{
    struct pipe_in *x = arg;
    buf_append(&x->pend, p, n);
    if (x->waiting && x->op) {
        x->waiting = 0;
        agent_op_drain(x->op);
    }
    if (x->pend.len - x->off > (1u << 20)) {
        x->paused = 1;
        return OBJSTORE_BLOCKED;
    }
    return OBJSTORE_OK;
}

static size_t in_source(void *arg, char *dst, size_t cap)
{
    struct pipe_in *x = arg;
    size_t avail = x->pend.len - x->off;
    if (avail) {
        size_t k = avail < cap ? avail : cap;
        memcpy(dst, x->pend.data + x->off, k);
        x->off += k;
        if (x->off == x->pend.len) {
            x->pend.len = x->off = 0;
        } else if (x->off >= (1u << 16) && x->off * 2 >= x->pend.len) {
            /* drop what was sent, or the buffer keeps it all */
            memmove(x->pend.data, x->pend.data + x->off, x->pend.len - x->off);
            x->pend.len -= x->off;
            x->off = 0;
        }
        if (x->paused && x->pend.len - x->off < (1u << 19) && x->r) {
            x->paused = 0;
            objstore_reader_resume(x->r);
        }
        return k;
    }
    if (x->read_done)
        return x->read_rc == 0 ? 0 : AGENT_SOURCE_ERROR;
    x->waiting = 1;
    if (x->paused && x->r) {
        x->paused = 0;
        objstore_reader_resume(x->r);
    }
    return AGENT_SOURCE_BLOCK;
}

static void in_read_done(void *arg, int rc, const char *err)
{
    struct pipe_in *x = arg;
    x->r = NULL;
    x->read_done = 1;
    x->read_rc = rc;
    if (rc && err)
        snprintf(x->err, sizeof(x->err), "%s", err);
    if (x->op && x->waiting) {
        x->waiting = 0;
        agent_op_drain(x->op);
    }
}

static void in_agent_done(void *arg, int rc, uint64_t entries, uint64_t bytes, const char *err)
{
    (void)entries;
    (void)bytes;
    struct pipe_in *x = arg;
    x->op = NULL;
    if (x->r)
        objstore_reader_cancel(x->r);
    x->r = NULL;
    x->rc = rc == 0 && x->read_rc == 0 ? 0 : -1;
    if (rc && err)
        snprintf(x->err, sizeof(x->err), "archive in: %s", err);
    x->done = 1;
}

/* ---- the runs ---- */

static double baseline(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "tar -C '%s' -cf - ws | zstd -3 -q -T1 >/dev/null", dir);
    double t0 = now_s();
    return system(cmd) == 0 ? now_s() - t0 : -1;
}

static void ready_cb(void *arg, int rc, const char *err)
{
    (void)err;
    *(int *)arg = rc == 0 ? 1 : -1;
}

static int snapshot(agent_client *ac, objstore *store, const char *dir, const char *label, int mb,
                    int agent_compresses, double base, const char *key)
{
    struct pipe_out p = {0};
    char err[300];
    p.w = objstore_writer_new(store, key, agent_compresses ? OBJSTORE_AS_IS : OBJSTORE_ZSTD,
                              out_written, out_drain, &p, err, sizeof(err));
    if (!p.w) {
        printf("snapshot %s: %s\n", label, err);
        return -1;
    }
    const char *paths[] = {"ws", NULL};
    struct agent_archive_spec spec = {
        .root = dir, .paths = paths, .compression = agent_compresses ? "zstd" : "none", .level = 3};
    struct agent_sink sink = {out_sink, &p};
    long rss0 = maxrss_kb();
    double t0 = now_s();
    p.op = agent_archive_out(ac, &spec, &sink, out_agent_done, &p, err, sizeof(err));
    if (!p.op) {
        objstore_writer_abort(p.w);
        printf("snapshot %s: %s\n", label, err);
        return -1;
    }
    run_until(&p.done, 1800);
    double secs = now_s() - t0;
    if (p.rc != 0) {
        printf("snapshot %s: failed: %s\n", label, p.err);
        return -1;
    }
    printf("snapshot %-34s %d MiB: %.2f s, %.0f MiB/s, stored %.0f MiB", label, mb, secs, mb / secs,
           (double)p.stored / 1048576.0);
    if (base > 0)
        printf("; ratio to tar|zstd -3: %.2fx", base / secs);
    printf("; worker peak RSS growth %ld KiB\n", maxrss_kb() - rss0);
    fflush(stdout);
    return 0;
}

static void restore(agent_client *ac, objstore *store, const char *dir, const char *label, int mb,
                    const char *key)
{
    struct pipe_in x = {0};
    buf_init(&x.pend);
    char err[300], dest[600];
    snprintf(dest, sizeof(dest), "%s/restored", dir);
    struct agent_source src = {in_source, &x};
    long rss0 = maxrss_kb();
    double t0 = now_s();
    x.op = agent_archive_in(ac, dest, 0, &src, in_agent_done, &x, err, sizeof(err));
    if (!x.op) {
        printf("restore %s: %s\n", label, err);
        buf_release(&x.pend);
        return;
    }
    x.r = objstore_reader_new_as_is(store, key, 1, in_sink, in_read_done, &x);
    run_until(&x.done, 1800);
    double secs = now_s() - t0;
    if (x.rc != 0)
        printf("restore  %s: failed: %s\n", label, x.err);
    else
        printf("restore  %-34s %d MiB: %.2f s, %.0f MiB/s; worker peak RSS growth %ld KiB\n", label,
               mb, secs, mb / secs, maxrss_kb() - rss0);
    buf_release(&x.pend);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dest);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dest);
}

static void series(agent_client *ac, const char *dir, const char *store_name, int mb, double base)
{
    char err[300];
    objstore *store = objstore_new_from_env(g_base, "bench", 0, err, sizeof(err));
    if (!store) {
        printf("bench_agent_snapshot: %s store: %s\n", store_name, err);
        return;
    }
    char label[128];
    snprintf(label, sizeof(label), "%s, agent zstd -3", store_name);
    if (snapshot(ac, store, dir, label, mb, 1, base, "bench/agent-zstd.tar.zst") == 0)
        restore(ac, store, dir, label, mb, "bench/agent-zstd.tar.zst");
    snprintf(label, sizeof(label), "%s, worker zstd (agent plain tar)", store_name);
    snapshot(ac, store, dir, label, mb, 0, base, "bench/worker-zstd.tar.zst");
    objstore_free(store);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    int mb = getenv("BENCH_SNAPSHOT_MB") ? atoi(getenv("BENCH_SNAPSHOT_MB")) : 1024;
    const char *b = getenv("BUILD") ? getenv("BUILD") : "build";
    char agent[512], dir[256], sock[320], spool[320], snaps[320], cmd[2048];
    snprintf(agent, sizeof(agent), "%s/sandbox-agent", b);
    if (access(agent, X_OK) != 0) {
        printf("bench_agent_snapshot: %s not built, skipped\n", agent);
        return 0;
    }
    snprintf(dir, sizeof(dir), "%s/sw-bench-snap-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir))
        return 1;
    snprintf(sock, sizeof(sock), "%s/agent.sock", dir);
    snprintf(spool, sizeof(spool), "%s/spool", dir);
    snprintf(snaps, sizeof(snaps), "%s/snapshots", dir);
    snprintf(cmd, sizeof(cmd),
             "mkdir -p '%s/ws/r' '%s/ws/t' && head -c %dM /dev/urandom > '%s/ws/r/rand.bin' && "
             "i=0; while [ $i -lt %d ]; do seq 1 200000 2>/dev/null | head -c 1048576 > "
             "'%s/ws/t/f'$i.txt; "
             "i=$((i+1)); done",
             dir, dir, mb / 2, dir, mb / 2, dir);
    if (system(cmd) != 0) {
        printf("bench_agent_snapshot: could not make the workspace\n");
        return 1;
    }
    double base = baseline(dir);
    if (base > 0)
        printf("baseline: tar -c | zstd -3 -T1 of %d MiB: %.2f s, %.0f MiB/s\n", mb, base,
               mb / base);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("LD_AGENT_SOCKET", sock, 1);
        setenv("LD_AGENT_PORT", "0", 1);
        setenv("LD_AGENT_HOOK_PORT", "0", 1);
        setenv("LD_AGENT_BIND", "127.0.0.1", 1);
        setenv("SANDBOX_AGENT_SPOOL_DIR", spool, 1);
        setenv("SANDBOX_AGENT_EXTRACT_MAX_RATIO", "0", 1);
        setenv("LIGHTDASH_LOG_LEVEL", "warn", 1);
        execl(agent, agent, (char *)NULL);
        _exit(127);
    }
    g_base = event_base_new();
    struct agent_client_opts o = {.base_url = "http://localhost", .unix_socket = sock};
    char err[300];
    agent_client *ac = agent_client_new(g_base, &o, err, sizeof(err));
    int ready = 0;
    for (int i = 0; ac && i < 200 && ready != 1; i++) {
        ready = 0;
        if (agent_client_ready(ac, ready_cb, &ready, err, sizeof(err)) == 0)
            run_until(&ready, 5);
        if (ready != 1)
            usleep(50000);
    }
    if (ready != 1) {
        printf("bench_agent_snapshot: the agent did not start\n");
    } else {
        s3_fixture_unset_env();
        setenv("SANDBOX_SNAPSHOT_DIR", snaps, 1);
        series(ac, dir, "local folder", mb, base);
        struct s3_fixture fx;
        char why[512];
        int st = s3_fixture_start(&fx, "snapshots", why, sizeof(why));
        if (st == 0) {
            series(ac, dir, "S3 (s3rver)", mb, base);
            s3_fixture_stop(&fx);
        } else {
            printf("bench_agent_snapshot: S3 runs skipped: %s\n", why);
        }
    }
    agent_client_free(ac);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    event_base_free(g_base);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return 0;
}
