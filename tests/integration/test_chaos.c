/* Bounded chaos runs for make test (make chaos runs the long ones). The first: 3 workers, 40
 * turns on 6 threads enqueued over 12 s, a worker SIGKILLed every ~3 s, Redis killed and
 * restarted once and refusing writes (OOM) once. The other two use the re-attachable
 * provider with long two-step turns: workers SIGKILLed every ~2 s, then a rolling restart
 * (SIGTERM) every ~2 s; no turn may be lost and nothing may be left behind.
 * CHAOS_SEED=N repeats a schedule. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "tests/support/chaos.h"
#include "tests/support/test.h"

TEST_CASE(chaos_bounded)
{
    const char *s = getenv("CHAOS_SEED");
    struct chaos_opts o = {
        .seed = s ? (unsigned)strtoul(s, NULL, 10) : (unsigned)time(NULL) ^ (unsigned)getpid(),
        .workers = 3,
        .concurrency = 2,
        .jobs = 40,
        .threads = 6,
        .enqueue_ms = 12000,
        .kill_every_ms = 3000,
        .redis_restarts = 1,
        .oom_windows = 1,
        .lease_ms = 3000,
        .timeout_ms = 90000,
    };
    int rc = chaos_run(&o);
    if (rc == 2)
        SKIP("the chaos run needs redis-server");
    CHECK_EQ_INT(rc, 0);
}

static unsigned chaos_seed(void)
{
    const char *s = getenv("CHAOS_SEED");
    return s ? (unsigned)strtoul(s, NULL, 10) : (unsigned)time(NULL) ^ (unsigned)getpid();
}

static void run_reattach(int sigterm)
{
    struct chaos_opts o = {
        .seed = chaos_seed(),
        .workers = 3,
        .concurrency = 3,
        .jobs = 30,
        .threads = 6,
        .enqueue_ms = 12000,
        .kill_every_ms = 2000,
        .redis_restarts = sigterm ? 0 : 1,
        .oom_windows = sigterm ? 0 : 1,
        .lease_ms = 3000,
        .timeout_ms = 120000,
        .reattach = 1,
        .sigterm = sigterm,
        .steps = 2,
        .step_min_ms = 300,
        .step_max_ms = 3000,
        .suspend = 1,
    };
    int rc = chaos_run(&o);
    if (rc == 2)
        SKIP("the chaos run needs redis-server");
    CHECK_EQ_INT(rc, 0);
}

TEST_CASE(chaos_reattach_kills)
{
    run_reattach(0);
}

TEST_CASE(chaos_reattach_rolling_restarts)
{
    run_reattach(1);
}

int main(void)
{
    RUN(chaos_bounded);
    RUN(chaos_reattach_kills);
    RUN(chaos_reattach_rolling_restarts);
    return test_report();
}
