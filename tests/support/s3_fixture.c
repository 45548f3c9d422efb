#include "tests/support/s3_fixture.h"

#include <stdlib.h>
#include <string.h>

static const char *const s3_fixture_vars[] = {
    "S3_ENDPOINT",         "S3_BUCKET", "S3_ACCESS_KEY",    "S3_SECRET_KEY",
    "S3_FORCE_PATH_STYLE", "S3_REGION", "S3_SESSION_TOKEN", NULL};

void s3_fixture_unset_env(void)
{
    for (int i = 0; s3_fixture_vars[i]; i++)
        unsetenv(s3_fixture_vars[i]);
}

int s3_fixture_start(struct s3_fixture *fx, const char *bucket, char *why, size_t whylen)
{
    memset(fx, 0, sizeof(*fx));
    int st = s3_server_start(&fx->srv, bucket, why, whylen);
    if (st != 0)
        return st;
    fx->running = 1;
    setenv("S3_ENDPOINT", fx->srv.endpoint, 1);
    setenv("S3_BUCKET", bucket, 1);
    setenv("S3_ACCESS_KEY", "S3RVER", 1);
    setenv("S3_SECRET_KEY", "S3RVER", 1);
    setenv("S3_FORCE_PATH_STYLE", "true", 1);
    setenv("S3_REGION", "us-east-1", 1);
    unsetenv("S3_SESSION_TOKEN");
    return 0;
}

void s3_fixture_set_secret(const char *secret)
{
    setenv("S3_SECRET_KEY", secret, 1);
}

void s3_fixture_stop(struct s3_fixture *fx)
{
    s3_fixture_unset_env();
    if (fx->running)
        s3_server_stop(&fx->srv);
    fx->running = 0;
}
