/* sandbox-agent internals shared by its modules. One agent per process, one event loop. */
#ifndef SW_AGENT_AGENT_H
#define SW_AGENT_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

#include "agent/httpd.h"

#define AGENT_VERSION "1.0.0"

struct agent_config {
    char *bind;                 /* LD_AGENT_BIND; default 0.0.0.0 with a token, else 127.0.0.1 */
    int bind_explicit;          /* LD_AGENT_BIND was set */
    int port;                   /* LD_AGENT_PORT, default 8080 */
    int hook_port;              /* LD_AGENT_HOOK_PORT, default 9000; 0: no hooks */
    char *socket_path;          /* LD_AGENT_SOCKET: also serve the main routes on this unix
                                 * socket (the docker provider's per-sandbox folder); NULL: none */
    char *token;                /* SANDBOX_AGENT_TOKEN; NULL: no auth (upstream behaviour) */
    size_t max_json_bytes;      /* JSON request bodies (SANDBOX_AGENT_MAX_JSON_BYTES, 1 MiB) */
    uint64_t max_file_bytes;    /* POST /files body (SANDBOX_AGENT_MAX_FILE_BYTES, 4 GiB) */
    size_t max_procs;           /* concurrent commands, runs and archive jobs (.._MAX_PROCS, 64) */
    size_t max_conns;           /* open connections (SANDBOX_AGENT_MAX_CONNS, 512) */
    uint64_t header_timeout_ms; /* a request head's time to arrive (.._HEADER_TIMEOUT_MS, 15 s) */
    uint64_t idle_timeout_ms;   /* keep-alive without a request (.._IDLE_TIMEOUT_MS, 60 s) */
    uint64_t spool_max_bytes;   /* per run output kept for re-attach (.._SPOOL_MAX_BYTES, 64 MiB) */
    char *spool_dir;            /* SANDBOX_AGENT_SPOOL_DIR, default $TMPDIR/sandbox-agent-<pid> */
    uint64_t run_retain_ms;     /* finished runs kept (SANDBOX_AGENT_RUN_RETAIN_MS, 1 h) */
    size_t max_runs_kept;       /* finished + running runs remembered (.._MAX_RUNS_KEPT, 256) */
    uint64_t extract_max_bytes; /* archive in: file bytes (.._EXTRACT_MAX_BYTES, 4 GiB) */
    uint64_t extract_max_ratio; /* archive in: file bytes per archive byte, plus 32 MiB
                                   (.._EXTRACT_MAX_RATIO, 100; 0: off) */
    uint64_t extract_max_entries; /* archive in: entries (.._EXTRACT_MAX_ENTRIES, 1000000) */
};

struct runs;

struct agent {
    struct event_base *base;
    struct agent_config cfg;
    struct httpd *http;
    int hook_listener; /* httpd listener index of the hook port; -1: no hook port */
    char **hook_env;   /* NULL-terminated "K=V" from the run hook's {"envs":{}}; may be NULL */
    char **base_env;   /* default PATH, the agent's environment, then hook_env, keys unique;
                          rebuilt by agent_env_refresh() whenever hook_env changes */
    size_t procs;      /* live commands + archive jobs, bounded by cfg.max_procs */
    struct runs *runs;
    int shutting_down;
};

/* Parses the environment into cfg; on a bad value returns -1 with one line in err naming the
 * variable. Unsets SANDBOX_AGENT_TOKEN so commands never inherit it. */
int agent_config_load(struct agent_config *cfg, char *err, size_t errlen);
void agent_config_release(struct agent_config *cfg);

/* The request handler given to httpd. */
void agent_handle(struct httpd_req *req, void *arg);

/* (Re)builds a->base_env from the process environment and a->hook_env. */
void agent_env_refresh(struct agent *a);
/* Builds a NULL-terminated envp: a->base_env (agent_env_refresh() must have run), then `envs`
 * (a JSON object of strings; NULL ok), which overrides. Returns NULL with err set when envs has a
 * non-string value. Free with agent_env_free. */
char **agent_env_build(const struct agent *a, const cJSON *envs, char *err, size_t errlen);
void agent_env_free(char **envp);

/* Reply helpers: JSON bodies {"error":"..."} and arbitrary cJSON (not consumed). */
void agent_reply_error(struct httpd_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void agent_reply_json(struct httpd_req *req, int status, const cJSON *body);

/* Command spec parsed from {cmd, cwd, envs, timeoutMs} (shared by /exec and /runs). */
#define AGENT_TAG_MAX 200 /* bytes of a run's tag */

struct agent_cmd {
    char *cmd;
    char *cwd;
    char **envp;
    uint64_t timeout_ms;
    char *tag; /* runs only ("tag": 1..AGENT_TAG_MAX printable ASCII, no space); NULL: none */
};
/* 0, or -1 with the upstream-compatible 400 message in err. */
int agent_cmd_parse(const struct agent *a, const char *body, size_t len, struct agent_cmd *out,
                    char *err, size_t errlen);
void agent_cmd_release(struct agent_cmd *c);

/* Run registry (runs.c). */
struct runs *runs_new(struct agent *a);
void runs_free(struct runs *r);
/* Handles /runs and /runs/...; returns 0 if it took the request, -1 if the path is not its. */
int runs_route(struct runs *r, struct httpd_req *req);
/* SIGTERMs every running run's group (shutdown). Returns how many were signalled. */
size_t runs_signal_all(struct runs *r, int sig);

/* Archive routes (archive_http.c): /archive/out, /archive/in. Same contract as runs_route. */
int archive_route(struct agent *a, struct httpd_req *req);
/* Live archive jobs are killed (shutdown). */
void archive_kill_all(int sig);

#endif
