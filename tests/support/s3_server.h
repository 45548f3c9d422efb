/* Test helper: a real S3 server (npm s3rver through tests/fakes/s3rver.js, which adds SigV4
 * verification and fault injection) on a free 127.0.0.1 port, in a fresh temporary directory,
 * with buckets created. Run from the repository root (as `make test` does). */
#ifndef SW_TESTS_S3_SERVER_H
#define SW_TESTS_S3_SERVER_H

#include <stddef.h>

#include "tests/support/fake_proc.h"

struct s3_server {
    struct fake_proc proc;
    int port;
    char dir[256];
    char endpoint[64]; /* "http://127.0.0.1:<port>" */
};

/* buckets: comma-separated names. Returns 0 when running; 1 when it cannot run here (node or
 * the npm packages missing: why says what to install); -1 on failure (why says what). */
int s3_server_start(struct s3_server *s, const char *buckets, char *why, size_t whylen);
/* Stops the server (waits up to 10 s, then SIGKILL) and removes its directory. */
void s3_server_stop(struct s3_server *s);

#endif
