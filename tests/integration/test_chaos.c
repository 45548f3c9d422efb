/* A bounded chaos run for make test (make chaos runs the long one): 3 workers, 40 turns on
 * 6 threads enqueued over 12 s, a worker SIGKILLed every ~3 s, Redis killed and restarted
 * once and refusing writes (OOM) once. CHAOS_SEED=N repeats a schedule. */
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

int main(void)
{
    RUN(chaos_bounded);
    return test_report();
}
