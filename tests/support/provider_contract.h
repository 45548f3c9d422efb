/* The provider contract: the same cases run against every backend's ops table.
 *
 *   static const struct contract_backend scripted = {.name = "scripted", .ops = &..., ...};
 *   provider_contract_run(&scripted);      one test case per contract case, named
 *                                          "<backend>/<case>" (TEST_ONLY selects them)
 *
 * Cases: exec streams, exit codes, environment and signal deaths; binary output; timeout and
 * kill of the whole process tree (also a kill before the command started); files (write with
 * parents created, read whole and with a max, overwrite, empty file); archives (when the
 * backend sets PROVIDER_CAP_ARCHIVE, else the wrappers' "no object store" default); suspend →
 * resume keeping the workspace, then delete_snapshot; destroy; concurrent execs; errors
 * (missing file, relative path, missing upload path, missing object). Every completion must
 * come from the loop, never from inside the starting call, and exactly once.
 *
 * Commands are written in the backend's command language (sh for real sandboxes, the
 * scripted provider's directives for it), so the backend names them in `cmd`. A NULL
 * command skips the part of a case that needs it, with a message. */
#ifndef SW_TESTS_PROVIDER_CONTRACT_H
#define SW_TESTS_PROVIDER_CONTRACT_H

#include <stdint.h>

#include "providers/provider.h"

struct contract_cmds {
    const char *streams; /* "out1\n" on stdout, "err1\n" on stderr, exit code 3 */
    const char *slow;    /* "first\n", then at least 1 s later "second\n", exit 0 */
    const char *env_foo; /* prints the value of FOO and a newline */
    const char *cat;     /* followed by " <path>": prints the file's bytes unchanged */
    const char *sigterm; /* dies of SIGTERM (exit code 128 + 15) */
    /* Starts a child process that would outlive its parent, prints "started\n", then never
     * ends on its own (the child and the parent sleep for minutes). */
    const char *hang_tree;
    /* Prints the number of processes of hang_tree still alive ("0\n" after a kill). */
    const char *tree_count;
    const char *sleep_1s; /* sleeps 1 s, then prints "done\n" */
};

struct contract_backend {
    const char *name;
    const struct provider_ops *ops;
    /* Before each case: prepares the environment (variables, servers) for provider_new.
     * NULL when the backend can run, else why not (the case is skipped with that message).
     * May be NULL. */
    const char *(*setup)(void *ctx);
    void (*teardown)(void *ctx); /* after each case; may be NULL */
    void *ctx;
    const char *workspace; /* absolute directory that suspend keeps, e.g. "/workspace" */
    struct contract_cmds cmd;
    long op_timeout_ms; /* how long any one operation may take; 0: 120000 */
};

/* The worker name the contract's sandboxes carry ("contract-<pid>"): clean up by it. */
const char *provider_contract_worker(void);

/* Runs every contract case against b as test cases of the tests/support/test.h harness.
 * The process must ignore SIGPIPE. */
void provider_contract_run(const struct contract_backend *b);

#endif
