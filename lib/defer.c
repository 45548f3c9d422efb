#include "lib/defer.h"

#include <stdlib.h>

#include <event2/event.h>

#include "lib/buf.h"

struct defer {
    void (*fn)(void *);
    void *arg;
};

static void defer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct defer d = *(struct defer *)arg;
    free(arg);
    d.fn(d.arg);
}

void defer_call(struct event_base *base, void (*fn)(void *), void *arg)
{
    struct defer *d = xcalloc(1, sizeof(*d));
    d->fn = fn;
    d->arg = arg;
    if (event_base_once(base, -1, EV_TIMEOUT, defer_cb, d, NULL) != 0)
        defer_cb(-1, 0, d);
}
