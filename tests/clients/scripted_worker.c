/* scripted_worker: a real sandbox-worker process (worker_main) with the scripted test provider
 * registered, for tests written in other languages (tests/clients/node). Configure it with the
 * worker's own environment (REDIS_URL, SANDBOX_QUEUE_PREFIX, SANDBOX_PROVIDER=scripted, ...);
 * SCRIPTED_FAIL_CREATE=N makes the first N sandbox creates fail (retry tests). Never part of
 * the product. */
#include <stdlib.h>

#include "providers/provider.h"
#include "tests/support/scripted_provider.h"
#include "worker/worker.h"

int main(int argc, char **argv)
{
    provider_register(&scripted_provider_ops);
    const char *fc = getenv("SCRIPTED_FAIL_CREATE");
    if (fc)
        scripted_stats()->fail_create = (int)strtol(fc, NULL, 10);
    return worker_main(argc, argv);
}
