/* Test fixture: a real S3 server (tests/support/s3_server.h) with a bucket, and the S3_*
 * variables pointing at it, so anything configured from the environment (objstore, the
 * docker provider) uses it.
 *
 *   struct s3_fixture fx;
 *   int st = s3_fixture_start(&fx, "snapshots", why, sizeof(why));   1: SKIP(why)
 *   ...
 *   s3_fixture_stop(&fx);                                              S3_* unset again */
#ifndef SW_TESTS_S3_FIXTURE_H
#define SW_TESTS_S3_FIXTURE_H

#include <stddef.h>

#include "tests/support/s3_server.h"

struct s3_fixture {
    struct s3_server srv;
    int running;
};

/* Starts the server with bucket and sets S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY/S3_SECRET_KEY
 * (s3rver's S3RVER/S3RVER), S3_FORCE_PATH_STYLE=true and S3_REGION=us-east-1. Returns 0 when
 * running, 1 when it cannot run here (why says what to install), -1 on failure (why). */
int s3_fixture_start(struct s3_fixture *fx, const char *bucket, char *why, size_t whylen);
/* Sets S3_SECRET_KEY (e.g. a wrong one, to see signatures refused). */
void s3_fixture_set_secret(const char *secret);
/* Unsets the S3_* variables and stops the server. Safe on a fixture that did not start. */
void s3_fixture_stop(struct s3_fixture *fx);
/* Only unsets the S3_* variables (the server keeps running). */
void s3_fixture_unset_env(void);

#endif
