/* Test helper: a fake server written for Node (a script under tests/fakes) run as a child process.
 * The fake prints one line (usually JSON with its ports) once it listens, and stops when its
 * stdin closes. Run from the repository root (as `make test` does). */
#ifndef SW_TESTS_FAKE_PROC_H
#define SW_TESTS_FAKE_PROC_H

#include <stddef.h>
#include <sys/types.h>

struct fake_proc {
    pid_t pid;
    int stdin_fd;    /* closing it stops the fake */
    char line[1024]; /* the first line it printed, without the newline */
};

/* Runs `node script args...` (args NULL-terminated). needs: NULL-terminated paths under
 * tests/fakes/node_modules that must exist. Returns 0 when running; 1 when it cannot run here
 * (node or a package missing: why says what to install); -1 on failure (why says what). */
int fake_proc_start(struct fake_proc *f, const char *script, const char *const *args,
                    const char *const *needs, char *why, size_t whylen);
/* Stops the fake (waits up to 10 s, then SIGKILL). Safe on a zeroed or stopped struct. */
void fake_proc_stop(struct fake_proc *f);
/* A fresh scratch folder "<TMPDIR or /tmp>/<name>-XXXXXX" for a fake into out: 0, or -1 (why
 * says what). */
int fake_proc_mkdtemp(const char *name, char *out, size_t outlen, char *why, size_t whylen);
/* Removes a scratch folder and everything in it; "" is a no-op, and out is cleared. */
void fake_proc_rmtree(char *dir);
/* The string value of "key" in the first line's flat JSON (first match), copied into out;
 * "" when absent. Enough for the URLs the fakes print. */
const char *fake_proc_field(const struct fake_proc *f, const char *key, char *out, size_t outlen);

#endif
