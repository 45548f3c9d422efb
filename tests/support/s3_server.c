/* Starts and stops tests/fakes/s3rver.js for the integration tests. */
#include "tests/support/s3_server.h"

#include <stdio.h>
#include <string.h>

int s3_server_start(struct s3_server *s, const char *buckets, char *why, size_t whylen)
{
    memset(s, 0, sizeof(*s));
    if (fake_proc_mkdtemp("s3rver", s->dir, sizeof(s->dir), why, whylen) != 0)
        return -1;
    const char *args[] = {s->dir, buckets, NULL};
    const char *needs[] = {"s3rver/package.json", "aws4/package.json", NULL};
    int rc = fake_proc_start(&s->proc, "tests/fakes/s3rver.js", args, needs, why, whylen);
    if (rc == 0 && sscanf(s->proc.line, "listening %d", &s->port) != 1) {
        snprintf(why, whylen, "s3rver printed \"%.200s\", not its port", s->proc.line);
        rc = -1;
    }
    if (rc != 0) {
        s3_server_stop(s);
        return rc;
    }
    snprintf(s->endpoint, sizeof(s->endpoint), "http://127.0.0.1:%d", s->port);
    return 0;
}

void s3_server_stop(struct s3_server *s)
{
    fake_proc_stop(&s->proc);
    fake_proc_rmtree(s->dir);
}
