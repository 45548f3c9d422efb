/* Helpers for tests that run real workers: a forked sandbox-worker process with the
 * scripted provider, and a blocking Redis client for setup and assertions. */
#ifndef SW_TESTS_WORKER_PROC_H
#define SW_TESTS_WORKER_PROC_H

#include <sys/types.h>

#include <hiredis.h>

struct worker_spec {
    const char *url;
    const char *prefix;
    const char *name;
    const char *const *env; /* extra "NAME=VALUE", NULL-terminated; may be NULL */
    int fail_create;        /* the scripted provider fails this many creates first */
    int fail_suspend_nth;   /* ... and its Nth suspend (0: none) */
    const char *log_path;   /* stdout and stderr of the worker are appended here */
};

/* Forks a worker running worker_main() with SANDBOX_PROVIDER=scripted. */
pid_t worker_spawn(const struct worker_spec *spec);
/* Sends sig and waits up to timeout_ms; returns the exit status (or 128+signal), -1 on
 * timeout (the process is then killed). */
int worker_stop(pid_t pid, int sig, int timeout_ms);

/* Blocking Redis client over TCP (hiredis' blocking API). */
redisContext *sync_connect(int port);
/* Runs a command (hiredis format) and returns the reply; aborts the test run on I/O error. */
redisReply *sync_cmd(redisContext *c, const char *fmt, ...);
/* HGET as a malloc'd string, NULL when missing. */
char *sync_hget(redisContext *c, const char *key, const char *field);
/* Polls HGET key field until it is non-empty or timeout_ms passes; malloc'd or NULL. */
char *sync_wait_hget(redisContext *c, const char *key, const char *field, int timeout_ms);
/* Sets the "handle" of the job hash's re-attach record to null, as if the worker had died
 * after starting the command but before its handle reached Redis. -1 when the record had no
 * handle object. */
int sync_forget_handle(redisContext *c, const char *job_key);
/* The data of job_id's "output" events ({prefix}:events:<job_id>) for one step ("0", "1", …)
 * and stream ("stdout", "stderr"), concatenated; NUL-terminated, caller frees. */
char *sync_event_output(redisContext *c, const char *prefix, const char *job_id, const char *step,
                        const char *stream);
long long sync_int(redisContext *c, const char *fmt, ...);
void sleep_ms(int ms);

#endif
