#include "agent/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/log.h"

/* ---------------------------------------------------------------- reaper */

struct watch {
    pid_t pid;
    proc_reap_fn fn;
    void *arg;
    struct watch *next;
};

static struct event *g_sigchld;
static struct watch *g_watches;

static void reap_all(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid <= 0)
            break;
        for (struct watch **w = &g_watches; *w; w = &(*w)->next) {
            if ((*w)->pid == pid) {
                struct watch *hit = *w;
                *w = hit->next;
                if (hit->fn)
                    hit->fn(hit->arg, pid, st);
                free(hit);
                break;
            }
        }
    }
}

int proc_reaper_init(struct event_base *base)
{
    if (g_sigchld)
        return 0;
    g_sigchld = evsignal_new(base, SIGCHLD, reap_all, NULL);
    if (!g_sigchld || evsignal_add(g_sigchld, NULL) != 0)
        return -1;
    return 0;
}

void proc_reaper_shutdown(void)
{
    if (g_sigchld)
        event_free(g_sigchld);
    g_sigchld = NULL;
    while (g_watches) {
        struct watch *w = g_watches;
        g_watches = w->next;
        free(w);
    }
}

void proc_reaper_watch(pid_t pid, proc_reap_fn fn, void *arg)
{
    struct watch *w = xcalloc(1, sizeof(*w));
    w->pid = pid;
    w->fn = fn;
    w->arg = arg;
    w->next = g_watches;
    g_watches = w;
}

void proc_reaper_unwatch(pid_t pid)
{
    for (struct watch *w = g_watches; w; w = w->next)
        if (w->pid == pid)
            w->fn = NULL;
}

int proc_exit_code(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return 255;
}

/* ---------------------------------------------------------------- commands */

struct proc {
    struct event_base *base;
    pid_t pid;
    int fds[2]; /* read ends: stdout, stderr; -1 when closed */
    struct event *ev[2];
    struct event *timer;
    int reaped;
    int wait_status;
    int ended;
    int paused;
    int grown[2]; /* pipe enlarged */
    struct proc_cbs cbs;
    void *arg;
};

/* One shared read buffer: the loop is single-threaded and on_output copies what it keeps. */
#define PROC_READ_CHUNK (1024 * 1024)
static char g_readbuf[PROC_READ_CHUNK];

/* Pipe capacities in bytes: Linux's default, and what bulk output grows them to. */
#define PROC_PIPE_DEFAULT (64 * 1024)
#define PROC_PIPE_STDOUT  (1024 * 1024)
#define PROC_PIPE_STDERR  (256 * 1024)

static void close_pipe(struct proc *p, int i)
{
    if (p->ev[i]) {
        event_free(p->ev[i]);
        p->ev[i] = NULL;
    }
    if (p->fds[i] >= 0) {
        close(p->fds[i]);
        p->fds[i] = -1;
    }
}

static void maybe_end(struct proc *p)
{
    if (p->ended || !p->reaped || p->fds[0] >= 0 || p->fds[1] >= 0)
        return;
    p->ended = 1;
    if (p->timer)
        evtimer_del(p->timer);
    p->cbs.on_end(p->arg, PROC_EXITED, proc_exit_code(p->wait_status));
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct proc *p = arg;
    int i = fd == p->fds[0] ? 0 : 1;
    ssize_t n = read(fd, g_readbuf, sizeof(g_readbuf));
    if (n >= PROC_PIPE_DEFAULT && !p->grown[i]) {
        /* the pipe was full: bulk output. A bigger pipe means fewer wakeups and larger frames
         * (best effort, capped by pipe-max-size); done lazily so that short commands do not pay
         * for it. */
        p->grown[i] = 1;
        fcntl(fd, F_SETPIPE_SZ, i == 0 ? PROC_PIPE_STDOUT : PROC_PIPE_STDERR);
    }
    if (n > 0) {
        p->cbs.on_output(p->arg, i == 0 ? NDJSON_STDOUT : NDJSON_STDERR, g_readbuf, (size_t)n);
        return; /* one read per wakeup keeps stdout and stderr fair */
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    close_pipe(p, i);
    maybe_end(p);
}

static void on_reaped(void *arg, pid_t pid, int st)
{
    (void)pid;
    struct proc *p = arg;
    p->reaped = 1;
    p->wait_status = st;
    maybe_end(p);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct proc *p = arg;
    if (p->ended)
        return;
    kill(-p->pid, SIGKILL);
    close_pipe(p, 0);
    close_pipe(p, 1);
    p->ended = 1;
    p->cbs.on_end(p->arg, PROC_TIMEOUT, -1);
}

struct proc *proc_spawn(struct event_base *base, const struct proc_spec *spec,
                        const struct proc_cbs *cbs, void *arg, char *err, size_t errlen)
{
    int out[2] = {-1, -1}, errp[2] = {-1, -1};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    int fa_ok = 0, at_ok = 0;
    struct proc *p = NULL;
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        goto fail;
    }
    if (posix_spawn_file_actions_init(&fa) != 0)
        goto fail;
    fa_ok = 1;
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
    posix_spawn_file_actions_addchdir_np(&fa, spec->cwd && *spec->cwd ? spec->cwd : "/");
    if (posix_spawnattr_init(&at) != 0)
        goto fail;
    at_ok = 1;
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
    static char arg0[] = "sh", arg1[] = "-c";
    char *argv[] = {arg0, arg1, (char *)(uintptr_t)spec->cmd, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, "/bin/sh", &fa, &at, argv, spec->envp);
    if (rc != 0) {
        snprintf(err, errlen, "spawn /bin/sh%s%s: %s", spec->cwd ? " in " : "",
                 spec->cwd ? spec->cwd : "", strerror(rc));
        goto fail;
    }
    close(out[1]);
    close(errp[1]);
    p = xcalloc(1, sizeof(*p));
    p->base = base;
    p->pid = pid;
    p->cbs = *cbs;
    p->arg = arg;
    p->fds[0] = out[0];
    p->fds[1] = errp[0];
    for (int i = 0; i < 2; i++) {
        fcntl(p->fds[i], F_SETFL, O_NONBLOCK); /* a fresh pipe end has no other status flag */
        p->ev[i] = event_new(base, p->fds[i], EV_READ | EV_PERSIST, on_readable, p);
        event_add(p->ev[i], NULL);
    }
    if (spec->timeout_ms) {
        p->timer = evtimer_new(base, on_timeout, p);
        struct timeval tv = {(time_t)(spec->timeout_ms / 1000),
                             (suseconds_t)(spec->timeout_ms % 1000) * 1000};
        evtimer_add(p->timer, &tv);
    }
    proc_reaper_watch(pid, on_reaped, p);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    return p;
fail:
    for (int i = 0; i < 2; i++) {
        if (out[i] >= 0)
            close(out[i]);
        if (errp[i] >= 0)
            close(errp[i]);
    }
    if (fa_ok)
        posix_spawn_file_actions_destroy(&fa);
    if (at_ok)
        posix_spawnattr_destroy(&at);
    return NULL;
}

pid_t proc_pid(const struct proc *p)
{
    return p->pid;
}

int proc_running(const struct proc *p)
{
    return !p->ended;
}

void proc_pause(struct proc *p)
{
    if (p->paused)
        return;
    p->paused = 1;
    for (int i = 0; i < 2; i++)
        if (p->ev[i])
            event_del(p->ev[i]);
}

void proc_resume(struct proc *p)
{
    if (!p->paused)
        return;
    p->paused = 0;
    for (int i = 0; i < 2; i++)
        if (p->ev[i])
            event_add(p->ev[i], NULL);
}

int proc_signal(struct proc *p, int sig)
{
    if (p->reaped && p->ended)
        return 0; /* nothing left that is ours */
    return kill(-p->pid, sig);
}

void proc_free(struct proc *p)
{
    if (!p)
        return;
    if (!p->ended || !p->reaped)
        kill(-p->pid, SIGKILL);
    if (!p->reaped)
        proc_reaper_unwatch(p->pid);
    close_pipe(p, 0);
    close_pipe(p, 1);
    if (p->timer)
        event_free(p->timer);
    free(p);
}
