/* Synchronous provider calls for tests that drive a provider directly (the sweep tests): each
 * runs the event loop until the operation reports or timeout_ms pass, and prints what the
 * provider said when it failed. */
#ifndef SW_TESTS_SYNC_PROVIDER_H
#define SW_TESTS_SYNC_PROVIDER_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "providers/provider.h"
#include "worker/sweep.h"

/* Wall clock, ms. */
long sp_now_ms(void);
/* Runs base until *flag is set: 0, or -1 after ms. */
int sp_wait(struct event_base *base, const int *flag, long ms);
/* Runs base for ms (a timer ends it). */
void sp_pump(struct event_base *base, long ms);
/* sp_wait for timeout_s seconds that prints "timed out after N s" when it times out. */
int sp_run_until(struct event_base *base, const int *flag, int timeout_s);
/* provider_create for thread (job "j", organization "o", project "p", data-app); NULL on
 * failure or timeout. */
struct sandbox *sp_create(struct event_base *base, struct provider *p, const char *thread,
                          const char *worker, long timeout_ms);
/* provider_suspend: rc (-1 on timeout); *ref gets the reference as JSON text (caller frees) or
 * NULL. */
int sp_suspend(struct event_base *base, struct sandbox *sb, char **ref, long timeout_ms);

#define SP_LIST_MAX 256
struct sp_listing {
    int rc;
    size_t n;
    char ids[SP_LIST_MAX][64], threads[SP_LIST_MAX][64];
    int64_t created[SP_LIST_MAX];
    char err[256];
};
/* provider_list into l (rc -1 on timeout); the callback must not run inside the call. */
void sp_list(struct event_base *base, struct provider *p, struct sp_listing *l, long timeout_ms);
/* 1 + the index of id in l, or 0. */
int sp_find(const struct sp_listing *l, const char *id);

/* One sweep_run once s is ready: 0 with *r, or -1 (not ready, refused or timeout). */
int sp_sweep(struct event_base *base, sweep *s, struct sweep_report *r, long timeout_ms);

#endif
