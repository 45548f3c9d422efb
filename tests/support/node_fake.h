/* Test helper: runs a Node.js fake under tests/fakes/ (a script that listens on a free
 * 127.0.0.1 port, prints "listening <port>" and stops when its stdin closes). Run from the
 * repository root (as `make test` does). */
#ifndef SW_TESTS_NODE_FAKE_H
#define SW_TESTS_NODE_FAKE_H

#include <stddef.h>
#include <sys/types.h>

struct node_fake {
    pid_t pid;
    int stdin_fd; /* closing it stops the fake */
    int port;
    char url[64]; /* "http://127.0.0.1:<port>" */
};

/* script: path from the repository root; module: a package under tests/fakes/node_modules the
 * script needs (NULL: none). Returns 0 when running; 1 when it cannot run here (node or the
 * package missing: why says what to install); -1 on failure (why says what). */
int node_fake_start(struct node_fake *f, const char *script, const char *module, char *why,
                    size_t whylen);
/* Stops the fake (closes stdin and sends SIGTERM, SIGKILL after 10 s). */
void node_fake_stop(struct node_fake *f);

#endif
