/* A chaos run of the delivery protocol: a real redis-server (append-only file, fsync always),
 * several forked workers with the scripted provider (some creates fail), many multi-turn
 * jobs over a few threads, a random worker stopped (and started again) every few seconds,
 * Redis itself killed and restarted, and windows where Redis refuses writes (OOM). At the end it
 * checks and prints:
 *   - every job has exactly one terminal result (job hash status, one {p}:results entry);
 *   - no command ran twice (the scripted provider's exec log: at most one exec per job and
 *     step, each line naming the job, the worker, its pid and the command);
 *   - each thread's turns ran in enqueue order (exec times along the thread);
 *   - no pending entries, no thread lock held, no parked job left.
 * With the re-attachable provider ("scripted-reattach": commands outlive their worker) also:
 *   - no turn is `lost`, and how many turns were re-attached and handed off;
 *   - 0 orphan sandboxes and 0 unreferenced snapshots after the run, and every snapshot a
 *     thread names still exists. What the run left behind is printed, then one sweep pass
 *     (the worker's orphan sweep) runs and the counts must be 0.
 * Everything random comes from the seed, printed first ("seed N"); the same seed gives the
 * same schedule (the processes' timing still varies). */
#ifndef SW_TESTS_CHAOS_H
#define SW_TESTS_CHAOS_H

struct chaos_opts {
    unsigned seed;
    int workers;        /* worker processes alive at any time */
    int concurrency;    /* WORKER_CONCURRENCY of each */
    int jobs;           /* turns enqueued in all */
    int threads;        /* spread over this many threads (job k on thread k % threads) */
    int enqueue_ms;     /* jobs are enqueued evenly over this long */
    int kill_every_ms;  /* a worker is SIGKILLed every 0.5x..1.5x this (0: never) */
    int redis_restarts; /* Redis is SIGKILLed and restarted this many times (spread out) */
    int oom_windows;    /* Redis refuses writes (maxmemory 1) this many times, 0.3-1.5 s each */
    int lease_ms;       /* WORKER_LEASE_MS */
    int timeout_ms;     /* give up waiting for results after this long */
    int reattach;       /* the scripted-reattach provider (else scripted) */
    int sigterm;        /* stop workers with SIGTERM, the replacement started first (a rolling
                         * restart), instead of SIGKILL */
    int steps;          /* run steps per job (0: 1) */
    int step_min_ms;    /* each step sleeps step_min_ms..step_max_ms (0, 0: 100..1000) */
    int step_max_ms;
    int suspend; /* jobs of odd threads suspend their sandbox (snapshots); others destroy */
};

/* 0: every check passed; 1: a check failed (printed); 2: could not run (no redis-server;
 * the reason is printed). */
int chaos_run(const struct chaos_opts *o);

#endif
