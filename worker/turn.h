/* One turn of a job: acquire a sandbox, run the steps, publish the result, suspend.
 * A turn lives from turn_start until it has published (or lost its lease) and released its
 * sandbox; it then calls worker_turn_finished. */
#ifndef SW_WORKER_TURN_H
#define SW_WORKER_TURN_H

struct worker;
struct queue_delivery;

/* Starts a turn for a delivered entry; takes ownership of d. */
void turn_start(struct worker *w, struct queue_delivery *d);
/* The queue reports that the lease of entry moved elsewhere: stop, publish nothing. */
void turn_lease_lost(struct worker *w, const char *entry);
/* The producer cancelled the job of entry. */
void turn_cancel_entry(struct worker *w, const char *entry);
/* Shutdown grace expired: every turn in flight whose provider can re-attach is handed off to
 * the peers as soon as it can be (its command keeps running; DESIGN §5); the others are
 * interrupted (suspended, reported lost). */
void turn_handoff_all(struct worker *w);

#endif
