/* sandbox-agent: the exec agent inside every sandbox image (see DESIGN §7).
 * Environment: LD_AGENT_PORT (8080), LD_AGENT_HOOK_PORT (9000), LD_AGENT_BIND (0.0.0.0 with a
 * token, 127.0.0.1 without),
 * SANDBOX_AGENT_TOKEN (optional bearer token), SANDBOX_AGENT_* limits (agent.h),
 * LIGHTDASH_LOG_LEVEL, LIGHTDASH_LOG_FORMAT. */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "agent/proc.h"
#include "lib/log.h"

/* Grace between SIGTERM to the children and SIGKILL at shutdown, in ms. */
#define SHUTDOWN_GRACE_MS 1000

static struct event *g_grace;

static void shutdown_now(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct agent *a = arg;
    event_base_loopexit(a->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct agent *a = arg;
    if (a->shutting_down) {
        event_base_loopexit(a->base, NULL);
        return;
    }
    a->shutting_down = 1;
    size_t n = runs_signal_all(a->runs, SIGTERM);
    archive_kill_all(SIGTERM);
    log_info(NULL, "agent: signal %d, shutting down (%zu run(s) signalled)", (int)sig, n);
    g_grace = evtimer_new(a->base, shutdown_now, a);
    struct timeval tv = {SHUTDOWN_GRACE_MS / 1000, (SHUTDOWN_GRACE_MS % 1000) * 1000};
    evtimer_add(g_grace, &tv);
}

static void setup_logging(void)
{
    enum log_level lvl = LOG_INFO;
    enum log_format fmt = LOG_FMT_PLAIN;
    const char *s = getenv("LIGHTDASH_LOG_LEVEL");
    if (s && *s && log_level_parse(s, &lvl) != 0)
        fprintf(stderr, "LIGHTDASH_LOG_LEVEL: unknown level \"%s\", using info\n", s);
    s = getenv("LIGHTDASH_LOG_FORMAT");
    if (s && *s && log_format_parse(s, &fmt) != 0)
        fprintf(stderr, "LIGHTDASH_LOG_FORMAT: unknown format \"%s\", using plain\n", s);
    log_setup(lvl, fmt, stdout);
    log_set_component("sandbox-agent");
}

int main(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
        printf("sandbox-agent %s\n", AGENT_VERSION);
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "usage: sandbox-agent [--version]  (configured by environment)\n");
        return 2;
    }
    /* Output frames are a few hundred KiB: keep them on the heap instead of fresh mmaps (page
     * faults on every frame); memory stays bounded by the output watermark. */
    mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 8 * 1024 * 1024);
    setup_logging();
    int rc = 1;
    struct agent a;
    memset(&a, 0, sizeof(a));
    char err[256];
    struct event *sigterm = NULL, *sigint = NULL;
    if (agent_config_load(&a.cfg, err, sizeof(err)) != 0) {
        log_error(NULL, "agent: %s", err);
        goto out;
    }
    signal(SIGPIPE, SIG_IGN);
    agent_env_refresh(&a);
    a.base = event_base_new();
    if (!a.base || proc_reaper_init(a.base) != 0) {
        log_error(NULL, "agent: cannot set up the event loop");
        goto out;
    }
    struct httpd_limits lim = {.max_conns = a.cfg.max_conns,
                               .header_timeout_ms = a.cfg.header_timeout_ms,
                               .idle_timeout_ms = a.cfg.idle_timeout_ms};
    a.http = httpd_new(a.base, &lim, agent_handle, &a);
    a.runs = runs_new(&a);
    int bound = 0;
    if (httpd_listen(a.http, a.cfg.bind, a.cfg.port, &bound, err, sizeof(err)) != 0) {
        log_error(NULL, "agent: LD_AGENT_PORT: %s", err);
        goto out;
    }
    int hook_bound = 0;
    a.hook_listener = -1;
    if (a.cfg.hook_port) {
        if (httpd_listen(a.http, a.cfg.bind, a.cfg.hook_port, &hook_bound, err, sizeof(err)) != 0) {
            log_error(NULL, "agent: LD_AGENT_HOOK_PORT: %s", err);
            goto out;
        }
        a.hook_listener = 1; /* the second listener */
    }
    /* After the hook listener: a unix socket serves the main routes (token rules included). */
    if (a.cfg.socket_path && httpd_listen_unix(a.http, a.cfg.socket_path, err, sizeof(err)) != 0) {
        log_error(NULL, "agent: LD_AGENT_SOCKET: %s", err);
        goto out;
    }
    sigterm = evsignal_new(a.base, SIGTERM, on_signal, &a);
    sigint = evsignal_new(a.base, SIGINT, on_signal, &a);
    evsignal_add(sigterm, NULL);
    evsignal_add(sigint, NULL);
    char hooks[32] = "off";
    if (hook_bound)
        snprintf(hooks, sizeof(hooks), ":%d", hook_bound);
    log_info(NULL, "agent: sandbox-agent %s listening on %s:%d%s%s (hooks %s), auth %s",
             AGENT_VERSION, a.cfg.bind, bound, a.cfg.socket_path ? " and " : "",
             a.cfg.socket_path ? a.cfg.socket_path : "", hooks, a.cfg.token ? "on" : "off");
    if (!a.cfg.token)
        log_warn(NULL,
                 "agent: no SANDBOX_AGENT_TOKEN: every route is open to whoever reaches %s:%d "
                 "(%s)",
                 a.cfg.bind, bound,
                 a.cfg.bind_explicit ? "LD_AGENT_BIND set" : "bound to loopback only");
    event_base_dispatch(a.base);
    rc = 0;
out:
    /* connections first: live /exec commands are killed with their clients */
    httpd_free(a.http);
    runs_free(a.runs);
    archive_kill_all(SIGKILL);
    if (g_grace)
        event_free(g_grace);
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
    proc_reaper_shutdown();
    agent_env_free(a.hook_env);
    agent_env_free(a.base_env);
    agent_config_release(&a.cfg);
    if (a.base)
        event_base_free(a.base);
    log_info(NULL, "agent: stopped");
    return rc;
}
