/* Every Redis key name, in one place. All keys share the hash tag "{<prefix>}" so Lua
 * scripts and Redis Cluster see one slot. Returned strings are malloc'd; caller frees. */
#ifndef SW_QUEUE_KEYS_H
#define SW_QUEUE_KEYS_H

#define QUEUE_GROUP "workers"

char *keys_jobs(const char *prefix);                    /* {p}:jobs     stream, group "workers" */
char *keys_results(const char *prefix);                 /* {p}:results  stream */
char *keys_delayed(const char *prefix);                 /* {p}:delayed  zset */
char *keys_dead(const char *prefix);                    /* {p}:dead     stream */
char *keys_job(const char *prefix, const char *job_id); /* {p}:job:<id>    hash */
char *keys_events(const char *prefix, const char *job_id);     /* {p}:events:<id> stream */
char *keys_thread(const char *prefix, const char *thread_id);  /* {p}:thread:<id> hash */
char *keys_cancel(const char *prefix, const char *job_id);     /* {p}:cancel:<id> string */
char *keys_threadq(const char *prefix, const char *thread_id); /* {p}:threadq:<id> zset */

#endif
