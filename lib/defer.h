/* Running a function from the event loop instead of inside the current call: how an
 * asynchronous API keeps its promise that callbacks never run re-entrantly. */
#ifndef SW_LIB_DEFER_H
#define SW_LIB_DEFER_H

struct event_base;

/* Calls fn(arg) once, from the next turn of base's loop (at once if libevent cannot queue it,
 * which only happens out of memory). */
void defer_call(struct event_base *base, void (*fn)(void *), void *arg);

#endif
