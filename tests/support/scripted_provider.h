/* A scripted sandbox provider for tests (never part of the product). Register it with
 * provider_register(&scripted_provider_ops) and set SANDBOX_PROVIDER=scripted.
 *
 * A run step's cmd is a script of ';'-separated directives, run in order on the loop:
 *   out TEXT   TEXT and a newline on stdout      err TEXT   the same on stderr
 *   sleep MS   wait                               exit N     end with exit code N
 *   env NAME   print NAME's value from the exec environment
 *   cat PATH   print a file of the sandbox        hang       never finish (timeout/kill)
 * Without an exit directive the command ends with 0. Files live in memory per sandbox;
 * suspend saves them as a snapshot {"kind":"scripted","snapshot":"snap-N"} that resume
 * restores, so multi-turn tests can check state survives.
 *
 * archive_upload stores a blob under the key in the process's memory (shared by all sandboxes
 * of the process): for each path in order, each sandbox file at or below it in the sandbox's
 * file order, as "NAME\nLEN\n" followed by LEN content bytes, NAME being the file's path from
 * the uploaded path's last component ("/ws/dist" holding "/ws/dist/a" gives "dist/a"). A path
 * with no file fails. bytes and sha256 describe that blob. archive_restore writes each NAME
 * back at DEST/NAME; an unknown key fails.
 *
 * SCRIPTED_EXEC_LOG=path: every exec appends "<job> <worker> <pid> <monotonic µs>" as one
 * line (one O_APPEND write), the ground truth of which turns ran where (tests/chaos).
 * SCRIPTED_SUSPEND_DELAY_MS=N: a successful suspend completes N ms later.
 * SCRIPTED_DESTROY_DELAY_MS=N: a destroy completes N ms later.
 *
 * scripted_reattach_provider_ops ("scripted-reattach", PROVIDER_CAP_REATTACH): the same
 * sandboxes, but a run's command (out, err, env, sleep, hang, exit) runs in a detached
 * process and its output and exit go to files under SCRIPTED_STATE_DIR (required), so it
 * survives a SIGKILLed worker and any process can re-attach: sandbox_ref {"id"}, reconnect
 * (fails once the sandbox was suspended or destroyed, or its <id>.sb file is removed: "gone"),
 * exec_handle {"run", "pid"}, exec_attach (replays from any offset), exec_detach. Files and
 * snapshots stay in the process's memory: a reconnected sandbox has no files.
 * SCRIPTED_CREATE_DELAY_MS=N: its creates complete N ms later. */
#ifndef SW_TESTS_SCRIPTED_PROVIDER_H
#define SW_TESTS_SCRIPTED_PROVIDER_H

#include <stddef.h>
#include <stdint.h>

#include "providers/provider.h"

extern const struct provider_ops scripted_provider_ops;
extern const struct provider_ops scripted_reattach_provider_ops;

struct scripted_stats {
    int created, resumed, suspended, destroyed, execs, killed, snapshots_deleted;
    int uploads, restores;
    int fail_create;      /* the next N creates fail */
    int fail_suspend_nth; /* the Nth suspend fails (0: none) */
    int suspend_calls;
    int create_delay_ms;   /* delay before create completes */
    int64_t first_call_us; /* monotonic time of the most recent create/resume call */
};
struct scripted_stats *scripted_stats(void);

/* SHA-256 of len bytes as 64 lowercase hex digits and a NUL (tests compute expected blobs). */
void scripted_sha256_hex(const void *data, size_t len, char out[65]);

#endif
