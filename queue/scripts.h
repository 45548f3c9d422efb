/* The Lua scripts that make the queue's multi-key steps atomic (DESIGN §5).
 * Each is loaded with SCRIPT LOAD on connect and called with EVALSHA (EVAL on NOSCRIPT).
 * Contracts (KEYS/ARGV) are written above each script in scripts.c. */
#ifndef SW_QUEUE_SCRIPTS_H
#define SW_QUEUE_SCRIPTS_H

enum queue_script {
    SCRIPT_BEGIN = 0, /* fence check, idempotency, cancel, tenant, thread lock, mark running */
    SCRIPT_COMPLETE,  /* fenced publish: result, job hash, thread hash, final event, XACK */
    SCRIPT_RENEW,     /* owner-guarded XCLAIM JUSTID per entry; reports lost and cancelled */
    SCRIPT_RECLAIM,   /* XAUTOCLAIM plus each entry's delivery count */
    SCRIPT_PROMOTE,   /* moves due retries from the delayed zset to the stream */
    SCRIPT_ENQUEUE,   /* producer side: XADD unless the job id is already queued or done */
    SCRIPT_HANDBACK,  /* a draining worker returns an entry it read but never started */
    SCRIPT_EVENT,     /* a progress event, written only while the entry is ours */
    SCRIPT_PROGRESS,  /* turn progress: job hash fields (re-attach record) and an event, fenced */
    SCRIPT__COUNT
};

const char *scripts_source(enum queue_script s);
/* 40-hex SHA1 of the source (computed once, static storage). */
const char *scripts_sha(enum queue_script s);

#endif
