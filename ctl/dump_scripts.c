/* dump_scripts: prints the queue's Lua scripts and key-name patterns as one JSON document on
 * stdout, so other languages' clients (clients/node) ship the very same scripts and key names
 * instead of copies. Build-time tool; it opens no connection.
 *
 *   {"group": "workers",
 *    "keys": {"jobs": "{${prefix}}:jobs", "job": "{${prefix}}:job:${id}", ...},
 *    "scripts": {"enqueue": {"sha": "<40 hex>", "source": "..."}, ...}}
 *
 * Key patterns come from queue/keys.c called with the placeholders ${prefix} and ${id}. */
#include <stdio.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "queue/keys.h"
#include "queue/scripts.h"

static const char *const script_names[SCRIPT__COUNT] = {
    [SCRIPT_BEGIN] = "begin",       [SCRIPT_COMPLETE] = "complete", [SCRIPT_RENEW] = "renew",
    [SCRIPT_RECLAIM] = "reclaim",   [SCRIPT_PROMOTE] = "promote",   [SCRIPT_ENQUEUE] = "enqueue",
    [SCRIPT_HANDBACK] = "handback", [SCRIPT_EVENT] = "event",       [SCRIPT_PROGRESS] = "progress",
};

static void add_key(cJSON *keys, const char *name, char *pattern)
{
    cJSON_AddStringToObject(keys, name, pattern);
    free(pattern);
}

int main(void)
{
    const char *p = "${prefix}", *id = "${id}";
    int rc = 1;
    char *out = NULL;
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddStringToObject(doc, "group", QUEUE_GROUP);
    cJSON *keys = cJSON_AddObjectToObject(doc, "keys");
    add_key(keys, "jobs", keys_jobs(p));
    add_key(keys, "results", keys_results(p));
    add_key(keys, "delayed", keys_delayed(p));
    add_key(keys, "dead", keys_dead(p));
    add_key(keys, "job", keys_job(p, id));
    add_key(keys, "events", keys_events(p, id));
    add_key(keys, "thread", keys_thread(p, id));
    add_key(keys, "cancel", keys_cancel(p, id));
    cJSON *scripts = cJSON_AddObjectToObject(doc, "scripts");
    for (int s = 0; s < SCRIPT__COUNT; s++) {
        char fallback[32];
        const char *name = script_names[s];
        if (!name) { /* a script added to the enum but not named here yet */
            snprintf(fallback, sizeof(fallback), "script_%d", s);
            name = fallback;
        }
        cJSON *o = cJSON_AddObjectToObject(scripts, name);
        cJSON_AddStringToObject(o, "sha", scripts_sha((enum queue_script)s));
        cJSON_AddStringToObject(o, "source", scripts_source((enum queue_script)s));
    }
    out = cJSON_Print(doc);
    if (!out || printf("%s\n", out) < 0 || fflush(stdout) != 0) {
        fprintf(stderr, "dump_scripts: cannot write the document\n");
        goto out;
    }
    rc = 0;
out:
    free(out);
    cJSON_Delete(doc);
    return rc;
}
