/* Child processes for the agent: `/bin/sh -c <cmd>` in its own process group, stdin from
 * /dev/null, stdout and stderr on non-blocking pipes read by the event loop, an optional
 * timeout, and one SIGCHLD reaper per process (it also reaps orphans when the agent is PID 1).
 * Exit codes are real: the exit status, or 128+signal for a signal death. */
#ifndef SW_AGENT_PROC_H
#define SW_AGENT_PROC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <event2/event.h>

#include "agent/ndjson.h"

/* ---- reaper ---- */

typedef void (*proc_reap_fn)(void *arg, pid_t pid, int wait_status);
/* Installs the SIGCHLD handler on `base`; 0 / -1. Call once before spawning. */
int proc_reaper_init(struct event_base *base);
void proc_reaper_shutdown(void);
/* fn runs once when `pid` is reaped. The caller must have registered before returning to the
 * loop after the fork. */
void proc_reaper_watch(pid_t pid, proc_reap_fn fn, void *arg);
/* Forgets the callback (the pid is still reaped). */
void proc_reaper_unwatch(pid_t pid);
/* Exit status in the agent's convention (128+signal). */
int proc_exit_code(int wait_status);

/* ---- commands ---- */

struct proc;

enum proc_end { PROC_EXITED, PROC_TIMEOUT };

struct proc_cbs {
    /* Output as it arrives; `data` is valid only during the call. Must not free the proc. */
    void (*on_output)(void *arg, enum ndjson_stream s, const char *data, size_t n);
    /* Exactly once: after the process was reaped and both pipes hit EOF (exit_code valid), or
     * at the timeout right after the group was SIGKILLed (exit_code -1). May free the proc. */
    void (*on_end)(void *arg, enum proc_end how, int exit_code);
};

struct proc_spec {
    const char *cmd;
    const char *cwd;     /* NULL: "/" */
    char *const *envp;   /* NULL-terminated */
    uint64_t timeout_ms; /* 0: none */
};

/* Returns NULL with err filled when the spawn failed (e.g. no such cwd). Does not own
 * spec's strings after returning. */
struct proc *proc_spawn(struct event_base *base, const struct proc_spec *spec,
                        const struct proc_cbs *cbs, void *arg, char *err, size_t errlen);
pid_t proc_pid(const struct proc *p);
int proc_running(const struct proc *p);
/* Stop / restart reading the pipes (backpressure; the child blocks on a full pipe). */
void proc_pause(struct proc *p);
void proc_resume(struct proc *p);
/* Sends sig to the whole process group; 0 / -1 (errno). */
int proc_signal(struct proc *p, int sig);
/* SIGKILLs the group if still running; no callbacks afterwards. NULL is fine. */
void proc_free(struct proc *p);

#endif
