/* make chaos: the delivery protocol under worker kills and Redis restarts (tests/support/
 * chaos.h says what is checked). Options, all optional:
 *   chaos [--seed N] [--workers N] [--jobs N] [--threads N] [--seconds N] [--kill-ms N]
 *         [--redis-restarts N] [--oom-windows N] [--reattach] [--sigterm] [--steps N]
 *         [--step-ms MIN-MAX] [--suspend]
 * --seconds is how long jobs keep being enqueued (kills and restarts spread over it).
 * --reattach: the re-attachable scripted provider (adds the lost/orphan invariants);
 * --sigterm: workers are replaced by a rolling restart (SIGTERM) instead of SIGKILL;
 * --steps, --step-ms: run steps per job and how long each sleeps; --suspend: odd threads'
 * jobs suspend (snapshots) instead of destroying their sandbox.
 * Exit status 0 when every check passed, 1 otherwise, 77 when redis-server is missing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tests/support/chaos.h"

static int arg_int(const char *name, const char *v, int lo, int hi)
{
    char *end;
    long n = strtol(v ? v : "", &end, 10);
    if (!v || !*v || *end || n < lo || n > hi) {
        fprintf(stderr, "chaos: %s wants an integer in %d..%d\n", name, lo, hi);
        exit(2);
    }
    return (int)n;
}

int main(int argc, char **argv)
{
    struct chaos_opts o = {
        .seed = (unsigned)time(NULL) ^ (unsigned)getpid(),
        .workers = 4,
        .concurrency = 3,
        .jobs = 300,
        .threads = 30,
        .enqueue_ms = 60000,
        .kill_every_ms = 3000,
        .redis_restarts = 2,
        .oom_windows = 3,
        .lease_ms = 3000,
        .timeout_ms = 240000,
    };
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--seed") == 0)
            o.seed = (unsigned)strtoul(v ? v : "0", NULL, 10);
        else if (strcmp(argv[i], "--workers") == 0)
            o.workers = arg_int(argv[i], v, 1, 64);
        else if (strcmp(argv[i], "--jobs") == 0)
            o.jobs = arg_int(argv[i], v, 1, 100000);
        else if (strcmp(argv[i], "--threads") == 0)
            o.threads = arg_int(argv[i], v, 1, 10000);
        else if (strcmp(argv[i], "--seconds") == 0)
            o.enqueue_ms = 1000 * arg_int(argv[i], v, 1, 3600);
        else if (strcmp(argv[i], "--kill-ms") == 0)
            o.kill_every_ms = arg_int(argv[i], v, 0, 3600000);
        else if (strcmp(argv[i], "--redis-restarts") == 0)
            o.redis_restarts = arg_int(argv[i], v, 0, 100);
        else if (strcmp(argv[i], "--oom-windows") == 0)
            o.oom_windows = arg_int(argv[i], v, 0, 100);
        else if (strcmp(argv[i], "--steps") == 0)
            o.steps = arg_int(argv[i], v, 1, 20);
        else if (strcmp(argv[i], "--step-ms") == 0) {
            int lo = -1, hi = -1;
            if (!v || sscanf(v, "%d-%d", &lo, &hi) != 2 || lo < 0 || hi < lo || hi > 600000) {
                fprintf(stderr, "chaos: --step-ms wants MIN-MAX (ms)\n");
                return 2;
            }
            o.step_min_ms = lo;
            o.step_max_ms = hi;
        } else if (strcmp(argv[i], "--reattach") == 0) {
            o.reattach = 1;
            continue; /* the flags take no value */
        } else if (strcmp(argv[i], "--sigterm") == 0) {
            o.sigterm = 1;
            continue;
        } else if (strcmp(argv[i], "--suspend") == 0) {
            o.suspend = 1;
            continue;
        } else {
            fprintf(
                stderr,
                "usage: chaos [--seed N] [--workers N] [--jobs N] [--threads N] "
                "[--seconds N] [--kill-ms N] [--redis-restarts N] [--oom-windows N] [--reattach] "
                "[--sigterm] [--steps N] [--step-ms MIN-MAX] [--suspend]\n");
            return 2;
        }
        i++;
    }
    o.timeout_ms = o.enqueue_ms + 180000;
    int rc = chaos_run(&o);
    return rc == 2 ? 77 : rc;
}
