/* The provider contract (tests/support/provider_contract.h) against every backend that runs
 * here: the scripted test provider, docker (Docker exec against the real dockerd; skipped
 * with a message when docker or the test image is unavailable), docker-agent (the same
 * dockerd, an image carrying this tree's sandbox-agent driven over its unix socket) and e2b
 * (against the E2B fake; skipped when node is missing). A new backend adds one contract_backend
 * below (its fake started by its setup hook) and one provider_contract_run. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "providers/docker.h"
#include "providers/e2b.h"
#include "tests/support/e2b_server.h"
#include "tests/support/provider_contract.h"
#include "tests/support/s3_fixture.h"
#include "tests/support/scripted_provider.h"
#include "tests/support/test.h"

#define DOCKER_IMAGE "sandbox-worker-test:local"
#define AGENT_IMAGE  "sandbox-worker-agent-test:local" /* agent/image.sh: sandbox-agent inside */

static char g_snapdir[256];

/* ---- docker ---- */

static const char *docker_setup(void *ctx)
{
    (void)ctx;
    static int checked;
    static const char *why;
    if (!checked) {
        checked = 1;
        if (system("command -v docker >/dev/null 2>&1") != 0)
            why = "docker CLI/dockerd not installed";
        else if (system("docker info >/dev/null 2>&1") != 0 &&
                 system("./scripts/start-services.sh >/dev/null 2>&1 && "
                        "docker info >/dev/null 2>&1") != 0)
            why = "dockerd not reachable and could not be started (scripts/start-services.sh)";
        else if (system("docker image inspect " DOCKER_IMAGE " >/dev/null 2>&1") != 0 &&
                 system("./scripts/build-sandbox-image.sh " DOCKER_IMAGE " >/dev/null") != 0)
            why = "could not build the test image (needs busybox-static)";
    }
    if (why)
        return why;
    setenv("SANDBOX_SNAPSHOT_DIR", g_snapdir, 1);
    setenv("SANDBOX_DOCKER_IMAGE", DOCKER_IMAGE, 1);
    setenv("SANDBOX_AI_WRITEBACK_DOCKER_IMAGE", DOCKER_IMAGE, 1);
    setenv("SANDBOX_DOCKER_NETWORK", "none", 1);
    setenv("SANDBOX_DOCKER_AGENT", "auto", 1); /* the busybox image has no agent: Docker exec */
    return NULL;
}

/* docker on the agent path: the image carries sandbox-agent (built from this tree's binary by
 * scripts/build-sandbox-image.sh --agent); SANDBOX_DOCKER_AGENT=on fails instead of falling
 * back to Docker exec, so a pass proves the agent path ran. */
static const char *docker_agent_setup(void *ctx)
{
    static int checked;
    static const char *why;
    const char *base = docker_setup(ctx);
    if (base)
        return base;
    if (!checked) {
        checked = 1;
        if (access("build/sandbox-agent", X_OK) != 0)
            why = "build/sandbox-agent not built (make)";
        else if (system("./scripts/build-sandbox-image.sh --agent " AGENT_IMAGE " >/dev/null") != 0)
            why = "could not build the agent image (agent/image.sh)";
    }
    if (why)
        return why;
    setenv("SANDBOX_DOCKER_IMAGE", AGENT_IMAGE, 1);
    setenv("SANDBOX_AI_WRITEBACK_DOCKER_IMAGE", AGENT_IMAGE, 1);
    setenv("SANDBOX_DOCKER_AGENT", "on", 1);
    return NULL;
}

static const struct contract_backend docker_backend = {
    .name = "docker",
    .ops = &docker_provider_ops,
    .setup = docker_setup,
    .workspace = "/workspace",
    .cmd =
        {
            .streams = "echo out1; echo err1 >&2; exit 3",
            .slow = "echo first; sleep 2; echo second",
            .env_foo = "echo \"$FOO\"",
            .cat = "cat",
            .sigterm = "kill -TERM $$",
            .hang_tree = "sh -c 'sleep 301' & echo started; sleep 302; echo never",
            .tree_count = "ps | grep -c '[s]leep 30'",
            .sleep_1s = "sleep 1; echo done",
        },
};

/* ---- e2b: the E2B fake (tests/fakes/e2b.js), started once ---- */

static struct e2b_server g_e2b;
static int g_e2b_state; /* 0 not tried, 1 running, -1 cannot run */
static char g_e2b_why[512];

static const char *e2b_setup(void *ctx)
{
    (void)ctx;
    if (g_e2b_state == 0)
        g_e2b_state = e2b_server_start(&g_e2b, g_e2b_why, sizeof(g_e2b_why)) == 0 ? 1 : -1;
    if (g_e2b_state < 0)
        return g_e2b_why;
    setenv("E2B_API_KEY", g_e2b.api_key, 1);
    setenv("E2B_API_URL", g_e2b.url, 1);
    setenv("E2B_SANDBOX_URL", g_e2b.url, 1);
    setenv("SANDBOX_SNAPSHOT_DIR", g_snapdir, 1); /* archives: the folder store */
    return NULL;
}

/* The fake runs commands as host processes in the sandbox's directory: absolute paths in a
 * command line go through $E2B_FAKE_ROOT, and processes are counted host-wide (distinct
 * sleep lengths keep other backends' sleepers out of the count). */
static const struct contract_backend e2b_backend = {
    .name = "e2b",
    .ops = &e2b_provider_ops,
    .setup = e2b_setup,
    .workspace = "/home/user/workspace",
    .cmd =
        {
            .streams = "echo out1; echo err1 >&2; exit 3",
            .slow = "echo first; sleep 2; echo second",
            .env_foo = "echo \"$FOO\"",
            .cat = "f() { cat \"$E2B_FAKE_ROOT$1\"; }; f",
            .sigterm = "kill -TERM $$",
            .hang_tree = "sh -c 'sleep 311' & echo started; sleep 312; echo never",
            .tree_count = "ps -eo args | grep -c '[s]leep 31[12]'",
            .sleep_1s = "sleep 1; echo done",
        },
    .op_timeout_ms = 60000,
};

/* docker with its objects in S3 (s3rver): archives and snapshots take the S3 path. */
static struct s3_fixture g_fx;
static char g_fx_why[512];

static const char *docker_s3_setup(void *ctx)
{
    const char *why = docker_setup(ctx);
    if (why)
        return why;
    int st = s3_fixture_start(&g_fx, "snapshots", g_fx_why, sizeof(g_fx_why));
    if (st == 0)
        return NULL;
    if (st < 0) /* a broken fixture is a failure, not a skip */
        test_fail(__FILE__, __LINE__, "s3rver: %s", g_fx_why);
    return g_fx_why;
}

/* docker-agent with its objects in S3: the agent's compressed stream goes to S3 as it is. */
static const char *docker_agent_s3_setup(void *ctx)
{
    const char *why = docker_agent_setup(ctx);
    if (why)
        return why;
    int st = s3_fixture_start(&g_fx, "snapshots", g_fx_why, sizeof(g_fx_why));
    if (st == 0)
        return NULL;
    if (st < 0)
        test_fail(__FILE__, __LINE__, "s3rver: %s", g_fx_why);
    return g_fx_why;
}

static void docker_s3_teardown(void *ctx)
{
    (void)ctx;
    s3_fixture_stop(&g_fx);
}

/* ---- scripted ---- */

static const struct contract_backend scripted_backend = {
    .name = "scripted",
    .ops = &scripted_provider_ops,
    .workspace = "/workspace",
    .cmd =
        {
            .streams = "out out1;err err1;exit 3",
            .slow = "out first;sleep 1000;out second",
            .env_foo = "env FOO",
            .cat = "cat",
            .sigterm = NULL, /* no processes, no signals */
            .hang_tree = "out started;hang",
            .tree_count = NULL,
            .sleep_1s = "sleep 1000;out done",
        },
    .op_timeout_ms = 10000,
};

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    unsetenv("NODE_ENV");
    unsetenv("S3_BUCKET");
    snprintf(g_snapdir, sizeof(g_snapdir), "%s/sw-contract-%d",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    provider_contract_run(&scripted_backend);
    provider_contract_run(&docker_backend);
    struct contract_backend docker_s3 = docker_backend;
    docker_s3.name = "docker-s3";
    docker_s3.setup = docker_s3_setup;
    docker_s3.teardown = docker_s3_teardown;
    provider_contract_run(&docker_s3);
    struct contract_backend docker_agent = docker_backend;
    docker_agent.name = "docker-agent";
    docker_agent.setup = docker_agent_setup;
    provider_contract_run(&docker_agent);
    docker_agent.name = "docker-agent-s3";
    docker_agent.setup = docker_agent_s3_setup;
    docker_agent.teardown = docker_s3_teardown;
    provider_contract_run(&docker_agent);
    provider_contract_run(&e2b_backend);
    if (g_e2b_state > 0)
        e2b_server_stop(&g_e2b);
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "docker ps -aq --filter label=sandbox-worker.worker=%s 2>/dev/null | "
             "xargs -r docker rm -f >/dev/null 2>&1; rm -rf '%s'",
             provider_contract_worker(), g_snapdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup failed\n");
    return test_report();
}
