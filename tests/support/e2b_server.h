/* Test helper: the E2B fake (tests/fakes/e2b.js: control plane and envd in one Node process)
 * on a free 127.0.0.1 port, in a fresh temporary directory, plus blocking calls to its
 * /_fake/ hooks. Run from the repository root (as `make test` does). */
#ifndef SW_TESTS_E2B_SERVER_H
#define SW_TESTS_E2B_SERVER_H

#include <stddef.h>

#include "tests/support/fake_proc.h"

struct e2b_server {
    struct fake_proc proc;
    int port;
    char dir[256];
    char url[64];      /* "http://127.0.0.1:<port>": API and envd base */
    char api_key[128]; /* what the fake accepts */
};

/* Returns 0 when running; 1 when it cannot run here (node missing: why says so); -1 on
 * failure (why says what). */
int e2b_server_start(struct e2b_server *s, char *why, size_t whylen);
/* The same with the envd version the fake reports for its sandboxes (NULL: its default). */
int e2b_server_start_envd(struct e2b_server *s, const char *envd_version, char *why, size_t whylen);
/* Stops the fake (waits up to 10 s, then SIGKILL) and removes its directory. */
void e2b_server_stop(struct e2b_server *s);
/* Blocking request to the fake (method "GET"/"POST", path like "/_fake/log", body JSON or
 * NULL). Returns the HTTP status (0 on transport failure); *out (may be NULL) gets the
 * malloc'd body. */
long e2b_server_call(const struct e2b_server *s, const char *method, const char *path,
                     const char *body, char **out);

#endif
