/* sandboxctl: the operator CLI for the job queue (docs/protocol.md).
 *
 *   sandboxctl enqueue [FILE|-]     validate a job locally, then enqueue it
 *   sandboxctl watch JOB            print a job's events as they arrive
 *   sandboxctl wait JOB             wait for the result and print it
 *   sandboxctl cancel JOB           ask the worker to cancel a job
 *   sandboxctl job JOB              print the job's state hash
 *   sandboxctl thread THREAD        print a thread's sandbox hash
 *   sandboxctl stats                queue length, lag, in flight, retries, dead letters
 *   sandboxctl dead [list|replay ENTRY]
 *
 * Configuration comes from the same environment as the worker (REDIS_URL,
 * SANDBOX_QUEUE_PREFIX, REDIS_TLS_*, WORKER_JOB_TTL_S, limits for job validation).
 * Exit status: 0 ok; 1 the job did not succeed, or the request was refused or found
 * nothing; 2 usage, invalid job or configuration; 3 timed out waiting; 4 Redis error. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

#include "lib/buf.h"
#include "lib/env.h"
#include "lib/jsonx.h"
#include "lib/log.h"
#include "ctl/client.h"
#include "worker/config.h"
#include "worker/job.h"

#define EXIT_OK        0
#define EXIT_NOTOK     1
#define EXIT_USAGE     2
#define EXIT_TIMEOUT   3
#define EXIT_REDIS     4
#define BLOCK_MS       2000 /* one XREAD BLOCK round while following; the job hash is checked */
#define RETRY_MS       500  /* pause after a failed read while following (Redis reconnecting) */
#define EVENTS_BATCH   200
#define ID_MAX         128
#define MAX_POSITIONAL 2

#ifndef SANDBOX_WORKER_VERSION
#define SANDBOX_WORKER_VERSION "0.1.0"
#endif

/* ---- command table and usage ---- */

struct ctl;
typedef void (*run_fn)(struct ctl *x);

struct command {
    const char *name;
    const char *args;           /* positional synopsis */
    int min_pos, max_pos;       /* positional argument count */
    const char *const *options; /* accepted options; "name=" takes a value */
    const char *help;
    run_fn run;
};

static const char *const no_opts[] = {NULL};
static const char *const json_opts[] = {"json", NULL};
/* "name" is a flag; "name=PLACEHOLDER" takes a value. */
static const char *const follow_opts[] = {"timeout-ms=N", "json",          "from=ENTRY",
                                          "timestamps",   "no-timestamps", NULL};
static const char *const wait_opts[] = {"timeout-ms=N", NULL};
static const char *const cancel_opts[] = {"ttl-s=N", "force", NULL};
static const char *const jobs_opts[] = {"state=STATE", "thread=T", "worker=W",
                                        "count=N",     "json",     NULL};
static const char *const dead_opts[] = {"count=N", "after=ENTRY", "json", "all", NULL};
static const char *const queue_opts[] = {"queued", "json", NULL};
static const char *const threads_opts[] = {"feature=F", "json", NULL};

static void run_enqueue(struct ctl *x);
static void run_watch(struct ctl *x);
static void run_wait(struct ctl *x);
static void run_cancel(struct ctl *x);
static void run_job(struct ctl *x);
static void run_thread(struct ctl *x);
static void run_stats(struct ctl *x);
static void run_dead(struct ctl *x);
static void run_jobs(struct ctl *x);
static void run_workers(struct ctl *x);
static void run_queue(struct ctl *x);
static void run_retry(struct ctl *x);
static void run_threads(struct ctl *x);

static const struct command commands[] = {
    {"enqueue", "[FILE|-]", 0, 1, json_opts,
     "Validates the job JSON in FILE (standard input when absent or \"-\") exactly as the\n"
     "worker will, then adds it to the jobs stream unless a job with the same id was already\n"
     "enqueued. Prints \"<job id> <stream entry id>\" (--json: an object).\n"
     "Exit 0 enqueued, 1 the id already exists, 2 invalid job (the message names the field).",
     run_enqueue},
    {"watch", "JOB", 1, 1, follow_opts,
     "Prints the job's events from the start (or after entry --from ID) as they arrive, one\n"
     "line each (\"<type> step=<n> ...\"); an output event's data is written as is to stdout\n"
     "or stderr, like the command wrote it. --json prints one JSON object per event instead.\n"
     "Ends at the done event. Exit 0 succeeded, 1 any other final status, 3 --timeout-ms N\n"
     "elapsed first. Each event line starts with the event's time and the time elapsed since\n"
     "the first event shown (\"12:00:01.250 +3.5s \") when stdout is a terminal or with\n"
     "--timestamps; --no-timestamps turns that off.",
     run_watch},
    {"wait", "JOB", 1, 1, wait_opts,
     "Waits until the job has a final result and prints the result JSON. On a terminal,\n"
     "stderr shows a spinner with the job's phase and the time waited.\n"
     "Exit 0 succeeded, 1 failed/timeout/cancelled/lost/rejected, 3 --timeout-ms N elapsed\n"
     "first (default: wait without limit).",
     run_wait},
    {"cancel", "JOB", 1, 1, cancel_opts,
     "Sets the job's cancel key (expires after --ttl-s N, default WORKER_JOB_TTL_S). A queued\n"
     "job is cancelled when a worker picks it up, a running one at the worker's next lease\n"
     "renewal; the result then says \"cancelled\". Exit 1 when the job already finished, or\n"
     "when it is unknown (no job hash: never enqueued through `enqueue`, or expired); --force\n"
     "sets the key anyway (a job a producer added with a plain XADD has no hash yet).",
     run_cancel},
    {"retry", "JOB", 1, 1, json_opts,
     "Runs a finished job again, explicitly: a job whose status is failed, timeout, lost or\n"
     "cancelled goes back on the jobs stream with attempt + 1 (its text read back from its\n"
     "stream entry); its state hash is reset to queued, its events and cancel key deleted.\n"
     "Exit 1 when the job is unknown, succeeded, rejected, still queued or running, or its\n"
     "stream entry was trimmed.",
     run_retry},
    {"job", "[show] JOB", 1, 2, no_opts,
     "Prints the job's state hash as a JSON object (phase, attempt, owner, entry, timings;\n"
     "the result field as JSON), with \"last_events\": its last 10 events, oldest first\n"
     "(output data cut at 200 bytes).\n"
     "Exit 1 when there is none (never enqueued, or expired after WORKER_JOB_TTL_S).",
     run_job},
    {"threads", "ls | show THREAD | destroy THREAD", 1, 2, threads_opts,
     "ls: every thread (id, tenant, provider, state, sandbox id), sorted by id; --json one\n"
     "object per line. show THREAD: as `thread`. destroy THREAD: enqueues a destroy job for\n"
     "the thread (its sandbox and snapshot are deleted by a worker; --feature F, default\n"
     "data-app, picks the image the job names); prints \"<job id> <entry>\" like enqueue.\n"
     "Exit 1 when the thread is unknown.",
     run_threads},
    {"thread", "THREAD", 1, 1, no_opts,
     "Prints the thread's hash (tenant, provider, sandbox id, state, snapshot reference) as a\n"
     "JSON object. Exit 1 when the thread is unknown.",
     run_thread},
    {"stats", "", 0, 0, json_opts,
     "Prints the queue's numbers: jobs stream length, consumer group lag and pending (in\n"
     "flight) entries, consumers, delayed retries, dead letters, results stream length.",
     run_stats},
    {"dead", "[ls | show ENTRY | replay ENTRY | replay --all | purge]", 0, 2, dead_opts,
     "list (default): prints dead-letter entries, oldest first (--count N, default 100;\n"
     "--after ENTRY to page; --json: one object per line, \"entry\" the dead-letter entry\n"
     "id, \"job_entry\" the jobs stream entry it came from, \"job\" the job text).\n"
     "replay ENTRY: puts the entry's job back on the jobs stream as attempt 1, resets the\n"
     "job's state hash and events, and deletes the dead entry. Exit 1 when there is no such\n"
     "entry or the job id is queued or running again.\n"
     "replay --all: replays every entry in turn; prints one line each; exit 1 when any was\n"
     "refused. show ENTRY: the entry as one JSON object (exit 1 when none). purge: deletes\n"
     "every dead letter and prints how many.",
     run_dead},
    {"jobs", "[ls]", 0, 1, jobs_opts,
     "ls (default): lists jobs in one --state (default queued), at most --count N (default\n"
     "100), optionally only --thread T or --worker W:\n"
     "  queued    in the stream, not yet read by any worker (oldest first)\n"
     "  running   read and not yet acknowledged: worker, phase, idle time, deliveries\n"
     "  delayed   retries waiting for their backoff (due time, earliest first)\n"
     "  finished  the results stream, newest first (status, worker)\n"
     "One line per job; --json: one object per line {\"id\", \"state\", \"thread\", ...}.",
     run_jobs},
    {"workers", "[ls]", 0, 1, json_opts,
     "ls (default): the live workers (each heartbeats every 2 s; an entry expires after 10 s\n"
     "without one): name, state (running, paused, draining), in-flight turns / concurrency,\n"
     "seconds since the last heartbeat, version, provider, host. --json: one object per line.",
     run_workers},
    {"queue", "pause | resume | purge --queued", 1, 1, queue_opts,
     "pause: sets the queue's pause flag: workers stop reading new jobs within a heartbeat\n"
     "(2 s); turns in flight finish, retries and dead letters go on. resume: clears it.\n"
     "Producers can still enqueue while paused; `stats` shows the flag.\n"
     "purge --queued: deletes the jobs no worker has read yet (and their queued state, so\n"
     "their ids can be enqueued again); prints how many. Turns in flight are not touched.",
     run_queue},
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static const char env_help[] =
    "Environment: REDIS_URL (default redis://127.0.0.1:6379), SANDBOX_QUEUE_PREFIX (default\n"
    "sandbox), REDIS_TLS_CA_FILE, REDIS_TLS_INSECURE, REDIS_CONNECT_TIMEOUT_MS,\n"
    "REDIS_COMMAND_TIMEOUT_MS, WORKER_JOB_TTL_S; the worker's job limits (WORKER_MAX_JOB_BYTES,\n"
    "WORKER_TURN_TIMEOUT_MS, SANDBOX_INHERIT_ENV_ALLOW) for validation.\n"
    "Exit status: 0 ok, 1 not succeeded / refused / not found, 2 usage or invalid input,\n"
    "3 timed out waiting, 4 Redis error.\n";

static const char global_help[] =
    "Global options (anywhere on the line): -u, --redis-url URL (instead of REDIS_URL),\n"
    "--prefix P (instead of SANDBOX_QUEUE_PREFIX), --version, --help; --man prints the man\n"
    "page, --completion bash|zsh a completion script.\n"
    "--json: a single document prints one JSON object, a listing one object per line; keys\n"
    "are the protocol's field names (docs/protocol.md).\n";

static void usage_all(FILE *out)
{
    fprintf(out,
            "usage: sandboxctl [-u URL] [--prefix P] COMMAND [ARGS] [OPTIONS]\n\n%s\n"
            "commands:\n",
            global_help);
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].args);
    fprintf(out, "\n`sandboxctl COMMAND --help` describes one command.\n\n%s", env_help);
}

/* Text for roff: backslashes doubled, a leading "." or "'" guarded. */
static void man_text(FILE *out, const char *s)
{
    int bol = 1;
    for (; *s; s++) {
        if (bol && (*s == '.' || *s == '\''))
            fputs("\\&", out);
        if (*s == '\\')
            fputs("\\e", out);
        else if (*s == '-')
            fputs("\\-", out);
        else
            fputc(*s, out);
        bol = *s == '\n';
    }
}

/* The man page, from the same text as --help (make builds sandboxctl.1 with it). */
static void print_man(FILE *out)
{
    fputs(".TH SANDBOXCTL 1 \"\" \"sandboxctl " SANDBOX_WORKER_VERSION "\" \"User Commands\"\n"
          ".SH NAME\nsandboxctl \\- operator CLI for the sandbox\\-worker job queue\n"
          ".SH SYNOPSIS\n.B sandboxctl\n[\\-u URL] [\\-\\-prefix P] COMMAND [ARGS] [OPTIONS]\n"
          ".SH DESCRIPTION\n",
          out);
    man_text(out, global_help);
    fputs(".SH COMMANDS\n", out);
    for (size_t i = 0; i < NCOMMANDS; i++) {
        const struct command *c = &commands[i];
        fputs(".TP\n.B ", out);
        man_text(out, c->name);
        if (c->args[0]) {
            fputs(" ", out);
            man_text(out, c->args);
        }
        for (const char *const *o = c->options; *o; o++) {
            const char *eq = strchr(*o, '=');
            fputs(" [\\-\\-", out);
            if (eq) {
                fprintf(out, "%.*s ", (int)(eq - *o), *o);
                man_text(out, eq + 1);
            } else {
                man_text(out, *o);
            }
            fputs("]", out);
        }
        fputs("\n.nf\n", out);
        man_text(out, c->help);
        fputs("\n.fi\n", out);
    }
    fputs(".SH ENVIRONMENT AND EXIT STATUS\n.nf\n", out);
    man_text(out, env_help);
    fputs(".fi\n.SH SEE ALSO\n"
          "sandbox\\-worker \\-\\-help; docs/protocol.md and docs/operations.md of the project\n",
          out);
}

/* Shell completion scripts (bash, zsh) for the command names, subcommands and options. */
static void print_completion(FILE *out, const char *shell)
{
    int zsh = strcmp(shell, "zsh") == 0;
    if (zsh)
        fputs("#compdef sandboxctl\n", out);
    fputs("# sandboxctl completion (generated by sandboxctl --completion)\n_sandboxctl_words() {\n"
          "    case \"$1\" in\n",
          out);
    for (size_t i = 0; i < NCOMMANDS; i++) {
        const struct command *c = &commands[i];
        fprintf(out, "    %s) echo \"", c->name);
        /* subcommand words: the lowercase words of the synopsis */
        const char *a = c->args;
        while (*a) {
            while (*a && !(*a >= 'a' && *a <= 'z'))
                a++;
            const char *b = a;
            while (*b >= 'a' && *b <= 'z')
                b++;
            if (b > a)
                fprintf(out, "%.*s ", (int)(b - a), a);
            a = b;
        }
        for (const char *const *o = c->options; *o; o++) {
            const char *eq = strchr(*o, '=');
            fprintf(out, "--%.*s ", eq ? (int)(eq - *o) : (int)strlen(*o), *o);
        }
        fputs("--help\" ;;\n", out);
    }
    fputs("    esac\n}\n", out);
    fputs("_sandboxctl_commands=\"", out);
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(out, "%s ", commands[i].name);
    fputs("--version --help --prefix --redis-url\"\n", out);
    if (zsh) {
        fputs("_sandboxctl() {\n"
              "    if (( CURRENT == 2 )); then\n"
              "        compadd -- ${=_sandboxctl_commands}\n"
              "    else\n"
              "        compadd -- $(_sandboxctl_words \"${words[2]}\")\n"
              "    fi\n"
              "}\n"
              "_sandboxctl \"$@\"\n",
              out);
    } else {
        fputs("_sandboxctl() {\n"
              "    local cur=${COMP_WORDS[COMP_CWORD]}\n"
              "    if [ \"$COMP_CWORD\" -eq 1 ]; then\n"
              "        COMPREPLY=($(compgen -W \"$_sandboxctl_commands\" -- \"$cur\"))\n"
              "    else\n"
              "        COMPREPLY=($(compgen -W \"$(_sandboxctl_words \"${COMP_WORDS[1]}\")\" -- "
              "\"$cur\"))\n"
              "    fi\n"
              "}\n"
              "complete -F _sandboxctl sandboxctl\n",
              out);
    }
}

static void usage_one(const struct command *cmd, FILE *out)
{
    fprintf(out, "usage: sandboxctl %s%s%s", cmd->name, cmd->args[0] ? " " : "", cmd->args);
    for (const char *const *o = cmd->options; *o; o++) {
        const char *eq = strchr(*o, '=');
        if (eq)
            fprintf(out, " [--%.*s %s]", (int)(eq - *o), *o, eq + 1);
        else
            fprintf(out, " [--%s]", *o);
    }
    fprintf(out, "\n\n%s\n\n%s", cmd->help, env_help);
}

/* ---- state ---- */

struct opt_val {
    char *name; /* without "--" and "="; owned */
    const char *value;
};

struct ctl {
    const struct command *cmd;
    const char *pos[MAX_POSITIONAL];
    int npos;
    struct opt_val opts[8];
    int nopts;

    struct config cfg;
    struct event_base *base;
    client *c;
    int exit_code;
    int json;

    /* enqueue */
    struct buf job_text;
    char job_id[ID_MAX + 1];

    /* watch / wait */
    int print_events;
    char last[64];      /* events read up to this entry id */
    int64_t deadline;   /* monotonic ms; 0: none */
    int64_t timeout_ms; /* as given, for the message */
    int final_seen;     /* the job hash has a final status */
    char *final_status, *final_result;
    int hash_missing; /* the last read found no job hash */
    int rounds;       /* job/events reads done; the deadline applies after the first */
    int warned_missing, warned_conn;
    int stdout_nl; /* the last byte written to stdout was a newline (or nothing yet) */
    struct event *timer;
    int timestamps;         /* watch: prefix event lines with time and elapsed */
    int64_t first_event_ms; /* Unix ms of the first event shown; 0 before */
    struct event *spinner;  /* wait on a terminal: redraws the status line */
    int spin_frame;
    int64_t spin_start; /* monotonic ms */
    char phase[32];     /* the job's phase as last read */

    /* cancel */
    int64_t ttl_s;

    /* dead replay --all */
    char **all_ids;
    int all_n, all_pos, all_ok, all_refused;
};

static const char *opt_get(const struct ctl *x, const char *name)
{
    for (int i = 0; i < x->nopts; i++)
        if (strcmp(x->opts[i].name, name) == 0)
            return x->opts[i].value;
    return NULL;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void finish(struct ctl *x, int code)
{
    if (x->spinner) {
        event_del(x->spinner);
        fputs("\r\033[K", stderr); /* clear the spinner line */
        fflush(stderr);
    }
    x->exit_code = code;
    event_base_loopbreak(x->base);
}

static void fail_redis(struct ctl *x, const char *what, const char *err)
{
    fprintf(stderr, "sandboxctl: %s: %s\n", what, err ? err : "redis error");
    finish(x, EXIT_REDIS);
}

/* Strict decimal in [min, max]; -1 otherwise. */
static int parse_num(const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (!s || !*s)
        return -1;
    int64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9' || v > (INT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (*p - '0');
    }
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* Job and thread ids follow the job format's charset ([A-Za-z0-9_.:-], 1..128). */
static int id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '.' || c == ':' || c == '-';
        if (!ok)
            return 0;
    }
    return 1;
}

/* A stream entry id: "<ms>-<seq>" (or "<ms>"). */
static int entry_ok(const char *s)
{
    size_t n = strlen(s), digits = 0, dashes = 0;
    if (n < 1 || n > 41)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '-') {
            if (dashes++ || digits == 0 || i + 1 == n)
                return 0;
        } else if (s[i] >= '0' && s[i] <= '9') {
            digits++;
        } else {
            return 0;
        }
    }
    return 1;
}

/* Writes s for a one-line "key=value" display: control bytes escaped. */
static void put_value(FILE *out, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\n')
            fputs("\\n", out);
        else if (ch == '\r')
            fputs("\\r", out);
        else if (ch == '\t')
            fputs("\\t", out);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(out, "\\x%02x", ch);
        else
            fputc(ch, out);
    }
}

/* A hash as a JSON object; fields named in json_fields are embedded as JSON when they
 * parse. Caller frees. */
static char *hash_json(const struct client_record *h, const char *const *json_fields)
{
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; i < h->n; i++) {
        const struct client_field *f = &h->f[i];
        cJSON *item = NULL;
        for (const char *const *j = json_fields; *j && !item; j++)
            if (strcmp(f->name, *j) == 0 && f->value_len > 0)
                item = cJSON_ParseWithLength(f->value, f->value_len);
        if (!item)
            item = cJSON_CreateString(f->value);
        cJSON_AddItemToObject(o, f->name, item);
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

/* ---- enqueue ---- */

static int read_all(const char *path, struct buf *out, char *err, size_t errlen)
{
    FILE *f = stdin;
    int rc = -1;
    if (path && strcmp(path, "-") != 0) {
        f = fopen(path, "rb");
        if (!f) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            return -1;
        }
    }
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        buf_append(out, chunk, n);
    if (ferror(f)) {
        snprintf(err, errlen, "%s: read error", path && strcmp(path, "-") != 0 ? path : "stdin");
        goto out;
    }
    rc = 0;
out:
    if (f != stdin)
        fclose(f);
    return rc;
}

/* Validates the job before connecting: exit 2 with the field named. */
static int prepare_enqueue(struct ctl *x)
{
    char err[512];
    const char *path = x->npos ? x->pos[0] : NULL;
    if (read_all(path, &x->job_text, err, sizeof(err)) != 0) {
        fprintf(stderr, "sandboxctl: %s\n", err);
        return -1;
    }
    struct job_limits lim = {
        .max_job_bytes = x->cfg.max_job_bytes,
        .max_deadline_ms = x->cfg.turn_timeout_ms,
        .inherit_allow = (const char *const *)x->cfg.inherit_env_allow,
        .read_cap_bytes = x->cfg.read_cap_bytes,
        .max_result_bytes = x->cfg.max_result_bytes,
    };
    struct job *job = NULL;
    struct job_error jerr;
    if (job_parse(x->job_text.data ? x->job_text.data : "", x->job_text.len, &lim, &job, &jerr) !=
        0) {
        fprintf(stderr, "sandboxctl: invalid job: %s%s%s\n", jerr.field, jerr.field[0] ? ": " : "",
                jerr.message);
        return -1;
    }
    snprintf(x->job_id, sizeof(x->job_id), "%s", job->id);
    job_free(job);
    return 0;
}

static void enqueued(void *arg, enum client_enqueue_status st, const char *detail)
{
    struct ctl *x = arg;
    switch (st) {
    case CLIENT_ENQ_ADDED:
        if (x->json)
            printf("{\"id\":\"%s\",\"entry\":\"%s\"}\n", x->job_id, detail);
        else
            printf("%s %s\n", x->job_id, detail);
        finish(x, EXIT_OK);
        return;
    case CLIENT_ENQ_EXISTS:
        fprintf(stderr, "sandboxctl: job %s already exists (%s); not enqueued again\n", x->job_id,
                detail);
        finish(x, EXIT_NOTOK);
        return;
    case CLIENT_ENQ_ERROR:
        fail_redis(x, "enqueue", detail);
        return;
    }
}

static void run_enqueue(struct ctl *x)
{
    client_enqueue(x->c, x->job_id, x->job_text.data, x->job_text.len, enqueued, x);
}

/* ---- watch / wait ---- */

static void follow_tick(struct ctl *x);

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    follow_tick(arg);
}

static void follow_later(struct ctl *x, int ms)
{
    if (!x->timer)
        x->timer = evtimer_new(x->base, timer_cb, x);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(x->timer, &tv);
}

static int status_ok(const char *status)
{
    return status && strcmp(status, "succeeded") == 0;
}

/* The job is final: print what the command promises and exit. */
static void follow_done(struct ctl *x, const char *status, const char *result, size_t rlen,
                        int from_hash)
{
    if (x->print_events) {
        if (from_hash && !x->json) {
            if (!x->stdout_nl)
                putchar('\n');
            printf("done status=%s (from the job record: its events are gone)\n", status);
        } else if (from_hash) {
            printf("{\"type\":\"done\",\"status\":\"%s\",\"from\":\"job\"}\n", status);
        }
    } else {
        fwrite(result, 1, rlen, stdout);
        if (rlen == 0 || result[rlen - 1] != '\n')
            putchar('\n');
    }
    fflush(stdout);
    finish(x, status_ok(status) ? EXIT_OK : EXIT_NOTOK);
}

/* {"entry": <the record's stream entry id>, <field>: <value>...}. A field itself named
 * "entry" (a dead letter's jobs-stream entry) is written as "job_entry": one key, one
 * meaning, so `jq .entry` is always the id to pass back (dead replay, watch --from). */
static void print_event_json(const struct client_record *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "entry", e->id);
    for (size_t i = 0; i < e->n; i++) {
        const struct client_field *f = &e->f[i];
        const char *name = strcmp(f->name, "entry") == 0 ? "job_entry" : f->name;
        cJSON *item = NULL;
        if (strcmp(f->name, "event") == 0) { /* typed members replace the flat strings */
            cJSON *ev = cJSON_ParseWithLength(f->value, f->value_len);
            for (cJSON *m = ev ? ev->child : NULL; m; m = m->next) {
                cJSON *dup = cJSON_Duplicate(m, 1);
                if (!cJSON_ReplaceItemInObjectCaseSensitive(o, m->string, dup))
                    cJSON_AddItemToObject(o, m->string, dup);
            }
            cJSON_Delete(ev);
            continue;
        }
        if (strcmp(f->name, "result") == 0)
            item = cJSON_ParseWithLength(f->value, f->value_len);
        if (!item)
            item = cJSON_CreateString(f->value);
        if (cJSON_GetObjectItemCaseSensitive(o, name)) /* repeated field: the last wins */
            cJSON_DeleteItemFromObjectCaseSensitive(o, name);
        cJSON_AddItemToObject(o, name, item);
    }
    char *s = cJSON_PrintUnformatted(o);
    puts(s);
    free(s);
    cJSON_Delete(o);
}

/* "<type> k=v ..." for every field but type/data/result/event; done and retry add
 * error=<code>. */
static void print_event_line(struct ctl *x, const struct client_record *e, const char *type)
{
    if (!x->stdout_nl)
        putchar('\n');
    if (x->timestamps) {
        /* the entry id's milliseconds are Redis time when the event was written */
        int64_t ms = strtoll(e->id, NULL, 10);
        if (!x->first_event_ms)
            x->first_event_ms = ms;
        time_t sec = (time_t)(ms / 1000);
        struct tm tm;
        localtime_r(&sec, &tm);
        printf("%02d:%02d:%02d.%03d +%.1fs ", tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000),
               (double)(ms - x->first_event_ms) / 1000);
    }
    fputs(type, stdout);
    for (size_t i = 0; i < e->n; i++) {
        const struct client_field *f = &e->f[i];
        if (!strcmp(f->name, "type") || !strcmp(f->name, "data") || !strcmp(f->name, "result") ||
            !strcmp(f->name, "event"))
            continue;
        printf(" %s=", f->name);
        put_value(stdout, f->value, f->value_len);
    }
    size_t rlen;
    const char *result = client_record_get(e, "result", &rlen);
    cJSON *r = result ? cJSON_ParseWithLength(result, rlen) : NULL;
    const cJSON *code =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "error"), "code");
    if (cJSON_IsString(code)) {
        fputs(" error=", stdout);
        put_value(stdout, code->valuestring, strlen(code->valuestring));
    }
    cJSON_Delete(r);
    putchar('\n');
    x->stdout_nl = 1;
}

static void print_event(struct ctl *x, const struct client_record *e, const char *type)
{
    if (x->json) {
        print_event_json(e);
    } else if (strcmp(type, "output") == 0) {
        size_t len = 0;
        const char *data = client_record_get(e, "data", &len);
        const char *stream = client_record_get(e, "stream", NULL);
        if (data && len) {
            int err = stream && strcmp(stream, "stderr") == 0;
            fwrite(data, 1, len, err ? stderr : stdout);
            if (err)
                fflush(stderr);
            else
                x->stdout_nl = data[len - 1] == '\n';
        }
    } else {
        print_event_line(x, e, type);
    }
    fflush(stdout);
}

static void events_read(void *arg, int rc, const struct client_record *entries, size_t n,
                        const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        if (!x->warned_conn) {
            fprintf(stderr, "sandboxctl: reading events: %s (retrying)\n", err);
            x->warned_conn = 1;
        }
        follow_later(x, RETRY_MS);
        return;
    }
    x->warned_conn = 0;
    if (n == 0 && x->hash_missing && !strcmp(x->last, "0") && !x->warned_missing) {
        fprintf(stderr,
                "sandboxctl: job %s is unknown (not enqueued yet, or its record expired); "
                "waiting\n",
                x->pos[0]);
        x->warned_missing = 1;
    }
    for (size_t i = 0; i < n; i++) {
        const struct client_record *e = &entries[i];
        snprintf(x->last, sizeof(x->last), "%s", e->id);
        const char *type = client_record_get(e, "type", NULL);
        if (!type)
            type = "?";
        if (x->print_events)
            print_event(x, e, type);
        if (strcmp(type, "done") == 0) {
            const char *status = client_record_get(e, "status", NULL);
            size_t rlen = 0;
            const char *result = client_record_get(e, "result", &rlen);
            follow_done(x, status ? status : "", result ? result : "", rlen, 0);
            return;
        }
    }
    if (n == EVENTS_BATCH) {
        follow_tick(x); /* more are waiting */
        return;
    }
    if (x->final_seen) {
        /* Final in the hash, yet no done event after reading everything: the events
         * stream expired or was trimmed past it. The hash has the same result. */
        follow_done(x, x->final_status, x->final_result, strlen(x->final_result), 1);
        return;
    }
    follow_tick(x);
}

static void job_read(void *arg, int rc, const struct client_record *h, const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        if (!x->warned_conn) {
            fprintf(stderr, "sandboxctl: reading job: %s (retrying)\n", err);
            x->warned_conn = 1;
        }
        follow_later(x, RETRY_MS);
        return;
    }
    x->hash_missing = h->n == 0;
    const char *phase = client_record_get(h, "phase", NULL);
    snprintf(x->phase, sizeof(x->phase), "%s", phase ? phase : "unknown");
    const char *status = client_record_get(h, "status", NULL);
    if (status && *status && !x->final_seen) {
        const char *result = client_record_get(h, "result", NULL);
        x->final_seen = 1;
        x->final_status = xstrdup(status);
        x->final_result = xstrdup(result ? result : "");
    }
    int block = -1;
    if (!x->final_seen) {
        block = BLOCK_MS;
        if (x->deadline) {
            int64_t left = x->deadline - mono_ms();
            if (left < block)
                block = left > 1 ? (int)left : 1;
        }
    }
    client_events_read(x->c, x->pos[0], x->last, block, EVENTS_BATCH, events_read, x);
}

static void follow_tick(struct ctl *x)
{
    /* At least one full read even when the deadline passed while connecting, so what is
     * already there is always reported. */
    if (x->deadline && x->rounds++ > 0 && mono_ms() >= x->deadline) {
        fprintf(stderr, "sandboxctl: timed out after %lld ms waiting for job %s\n",
                (long long)x->timeout_ms, x->pos[0]);
        finish(x, EXIT_TIMEOUT);
        return;
    }
    client_job_get(x->c, x->pos[0], job_read, x);
}

static int prepare_follow(struct ctl *x)
{
    const char *t = opt_get(x, "timeout-ms");
    if (t) {
        if (parse_num(t, 1, INT32_MAX, &x->timeout_ms) != 0) {
            fprintf(stderr, "sandboxctl: --timeout-ms: must be an integer 1..%d, got \"%s\"\n",
                    INT32_MAX, t);
            return -1;
        }
        x->deadline = mono_ms() + x->timeout_ms;
    }
    const char *from = opt_get(x, "from");
    if (from && !entry_ok(from)) {
        fprintf(stderr, "sandboxctl: --from: not a stream entry id: \"%s\"\n", from);
        return -1;
    }
    snprintf(x->last, sizeof(x->last), "%s", from ? from : "0");
    x->stdout_nl = 1;
    return 0;
}

static void run_watch(struct ctl *x)
{
    x->print_events = 1;
    x->timestamps = !x->json && !opt_get(x, "no-timestamps") &&
                    (opt_get(x, "timestamps") || isatty(STDOUT_FILENO));
    follow_tick(x);
}

static void spin_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    static const char frames[] = "|/-\\";
    struct ctl *x = arg;
    x->spin_frame = (x->spin_frame + 1) % 4;
    fprintf(stderr, "\r\033[K%c job %s %s %.1fs", frames[x->spin_frame], x->pos[0],
            x->phase[0] ? x->phase : "...", (double)(mono_ms() - x->spin_start) / 1000);
    fflush(stderr);
}

static void run_wait(struct ctl *x)
{
    x->print_events = 0;
    if (isatty(STDERR_FILENO)) { /* nothing when stderr is not a terminal */
        x->spin_start = mono_ms();
        x->spinner = event_new(x->base, -1, EV_PERSIST, spin_cb, x);
        struct timeval tv = {0, 100000};
        event_add(x->spinner, &tv);
    }
    follow_tick(x);
}

/* ---- cancel ---- */

static void cancel_set(void *arg, int rc, const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        fail_redis(x, "cancel", err);
        return;
    }
    finish(x, EXIT_OK);
}

static void cancel_job_read(void *arg, int rc, const struct client_record *h, const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        fail_redis(x, "cancel", err);
        return;
    }
    const char *status = client_record_get(h, "status", NULL);
    const char *phase = client_record_get(h, "phase", NULL);
    if (status && *status) {
        fprintf(stderr, "sandboxctl: job %s already finished (%s); nothing to cancel\n", x->pos[0],
                status);
        finish(x, EXIT_NOTOK);
        return;
    }
    if (h->n == 0 && !opt_get(x, "force")) {
        fprintf(stderr,
                "sandboxctl: no job %s (never enqueued through sandboxctl/the client, or "
                "expired); --force sets the cancel key anyway\n",
                x->pos[0]);
        finish(x, EXIT_NOTOK);
        return;
    }
    if (h->n == 0)
        printf("cancel requested for job %s (unknown here: the key is set anyway and expires "
               "in %lld s)\n",
               x->pos[0], (long long)x->ttl_s);
    else
        printf("cancel requested for job %s (phase %s)\n", x->pos[0], phase ? phase : "?");
    client_cancel(x->c, x->pos[0], (int)x->ttl_s, cancel_set, x);
}

static void run_cancel(struct ctl *x)
{
    client_job_get(x->c, x->pos[0], cancel_job_read, x);
}

/* ---- job, thread ---- */

static void hash_read(struct ctl *x, const char *what, int rc, const struct client_record *h,
                      const char *err, const char *const *json_fields)
{
    if (rc != 0) {
        fail_redis(x, what, err);
        return;
    }
    if (h->n == 0) {
        fprintf(stderr, "sandboxctl: %s %s not found\n", what, x->pos[0]);
        finish(x, EXIT_NOTOK);
        return;
    }
    char *s = hash_json(h, json_fields);
    puts(s);
    free(s);
    finish(x, EXIT_OK);
}

#define JOB_SHOW_EVENTS   10
#define JOB_SHOW_DATA_MAX 200

static void job_events_read(void *arg, int rc, const struct client_record *e, size_t n,
                            const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        fail_redis(x, "job events", err);
        return;
    }
    cJSON *o = cJSON_Parse(x->job_text.data);
    cJSON *list = cJSON_AddArrayToObject(o, "last_events");
    for (size_t i = n; i-- > 0;) { /* newest first from Redis: print oldest first */
        cJSON *ev = cJSON_CreateObject();
        cJSON_AddStringToObject(ev, "entry", e[i].id);
        for (size_t k = 0; k < e[i].n; k++) {
            const struct client_field *f = &e[i].f[k];
            if (strcmp(f->name, "result") == 0)
                continue;                        /* the job's result is above */
            if (strcmp(f->name, "event") == 0) { /* the typed members, as JSON */
                cJSON *typed = cJSON_ParseWithLength(f->value, f->value_len);
                if (typed) {
                    cJSON_AddItemToObject(ev, "event", typed);
                    continue;
                }
            }
            if (strcmp(f->name, "data") == 0 && f->value_len > JOB_SHOW_DATA_MAX) {
                char *cut = xstrndup(f->value, JOB_SHOW_DATA_MAX);
                cJSON_AddStringToObject(ev, f->name, cut);
                free(cut);
                cJSON_AddBoolToObject(ev, "data_cut", 1);
                continue;
            }
            cJSON_AddStringToObject(ev, f->name, f->value);
        }
        cJSON_AddItemToArray(list, ev);
    }
    char *s = cJSON_Print(o);
    puts(s);
    free(s);
    cJSON_Delete(o);
    finish(x, EXIT_OK);
}

static void job_hash_read(void *arg, int rc, const struct client_record *h, const char *err)
{
    static const char *const json_fields[] = {"result", NULL};
    struct ctl *x = arg;
    if (rc != 0 || h->n == 0) {
        hash_read(x, "job", rc, h, err, json_fields);
        return;
    }
    char *text = hash_json(h, json_fields);
    buf_puts(&x->job_text, text);
    free(text);
    client_events_tail(x->c, x->pos[0], JOB_SHOW_EVENTS, job_events_read, x);
}

static void thread_hash_read(void *arg, int rc, const struct client_record *h, const char *err)
{
    static const char *const json_fields[] = {"snapshot", NULL};
    hash_read(arg, "thread", rc, h, err, json_fields);
}

static void run_job(struct ctl *x)
{
    client_job_get(x->c, x->pos[0], job_hash_read, x);
}

static void run_thread(struct ctl *x)
{
    client_thread_get(x->c, x->pos[0], thread_hash_read, x);
}

static int64_t wall_ms(void);

/* ---- stats ---- */

static void stats_read(void *arg, int rc, const struct client_stats *st, const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        fail_redis(x, "stats", err);
        return;
    }
    if (x->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "jobs", (double)st->jobs);
        cJSON_AddBoolToObject(o, "group", st->group);
        cJSON_AddNumberToObject(o, "consumers", (double)st->consumers);
        cJSON_AddNumberToObject(o, "pending", (double)st->pending);
        cJSON_AddNumberToObject(o, "lag", (double)st->lag);
        cJSON_AddStringToObject(o, "last_delivered", st->last_delivered);
        cJSON_AddNumberToObject(o, "delayed", (double)st->delayed);
        cJSON_AddNumberToObject(o, "delayed_next_ms", (double)st->delayed_next_ms);
        cJSON_AddNumberToObject(o, "dead", (double)st->dead);
        cJSON_AddNumberToObject(o, "results", (double)st->results);
        cJSON_AddBoolToObject(o, "paused", st->paused);
        cJSON_AddNumberToObject(o, "workers", (double)st->workers);
        cJSON_AddNumberToObject(
            o, "oldest_pending_age_ms",
            st->oldest_pending_ms < 0 ? -1 : (double)(wall_ms() - st->oldest_pending_ms));
        cJSON *cs = cJSON_AddArrayToObject(o, "consumer");
        for (size_t i = 0; i < st->nconsumers; i++) {
            cJSON *c = cJSON_CreateObject();
            cJSON_AddStringToObject(c, "name", st->consumer[i].name);
            cJSON_AddNumberToObject(c, "pending", (double)st->consumer[i].pending);
            cJSON_AddNumberToObject(c, "idle_ms", (double)st->consumer[i].idle_ms);
            cJSON_AddItemToArray(cs, c);
        }
        char *s = cJSON_Print(o);
        puts(s);
        free(s);
        cJSON_Delete(o);
    } else {
        printf("jobs %lld\n", st->jobs);
        printf("group %s\n", st->group ? "workers" : "none (no worker has connected yet)");
        printf("consumers %lld\n", st->consumers);
        printf("pending %lld\n", st->pending);
        printf("lag %lld\n", st->lag);
        printf("delayed %lld\n", st->delayed);
        printf("delayed_next_ms %lld\n", st->delayed_next_ms);
        printf("dead %lld\n", st->dead);
        printf("results %lld\n", st->results);
        printf("paused %s\n", st->paused ? "yes" : "no");
        printf("workers %lld\n", st->workers);
        if (st->oldest_pending_ms < 0)
            printf("oldest_pending_age_s -\n");
        else
            printf("oldest_pending_age_s %.1f\n",
                   (double)(wall_ms() - st->oldest_pending_ms) / 1000);
        for (size_t i = 0; i < st->nconsumers; i++)
            printf("consumer %s pending=%lld idle_ms=%lld\n", st->consumer[i].name,
                   st->consumer[i].pending, st->consumer[i].idle_ms);
    }
    finish(x, EXIT_OK);
}

static void run_stats(struct ctl *x)
{
    client_stats(x->c, stats_read, x);
}

/* ---- dead letters ---- */

static void dead_listed(void *arg, int rc, const struct client_record *entries, size_t n,
                        const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        fail_redis(x, "dead list", err);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const struct client_record *e = &entries[i];
        if (x->json) {
            /* The job text with its secrets masked, also for dead letters written before
             * the worker masked them itself. */
            struct client_field *f = xcalloc(e->n ? e->n : 1, sizeof(*f));
            char *masked = NULL;
            for (size_t k = 0; k < e->n; k++) {
                f[k] = e->f[k];
                if (!masked && strcmp(f[k].name, "job") == 0) {
                    masked = job_redact_secrets(f[k].value, f[k].value_len, &f[k].value_len);
                    f[k].value = masked;
                }
            }
            struct client_record shown = {e->id, e->n, f};
            print_event_json(&shown);
            free(masked);
            free(f);
            continue;
        }
        static const char *const shown[] = {"id", "thread", "reason"};
        fputs(e->id, stdout);
        for (size_t k = 0; k < sizeof(shown) / sizeof(shown[0]); k++) {
            size_t len;
            const char *v = client_record_get(e, shown[k], &len);
            printf(" %s=", shown[k]);
            if (v)
                put_value(stdout, v, len);
        }
        putchar('\n');
    }
    finish(x, EXIT_OK);
}

static void replayed(void *arg, enum client_replay_status st, const char *job, const char *entry)
{
    struct ctl *x = arg;
    const char *dead = x->pos[1];
    switch (st) {
    case CLIENT_REPLAY_OK:
        printf("replayed dead entry %s: job %s enqueued as %s\n", dead, *job ? job : "(no id)",
               entry);
        finish(x, EXIT_OK);
        return;
    case CLIENT_REPLAY_MISSING:
        fprintf(stderr, "sandboxctl: no dead-letter entry %s\n", dead);
        finish(x, EXIT_NOTOK);
        return;
    case CLIENT_REPLAY_NO_JOB:
        fprintf(stderr, "sandboxctl: dead-letter entry %s carries no job; not replayed\n", dead);
        finish(x, EXIT_NOTOK);
        return;
    case CLIENT_REPLAY_ACTIVE:
        fprintf(stderr,
                "sandboxctl: the job of dead-letter entry %s is active again (%s); not "
                "replayed\n",
                dead, entry);
        finish(x, EXIT_NOTOK);
        return;
    case CLIENT_REPLAY_ERROR:
        fail_redis(x, "dead replay", entry);
        return;
    }
}

static int prepare_dead(struct ctl *x)
{
    const char *sub = x->npos ? x->pos[0] : "list";
    if (strcmp(sub, "ls") == 0)
        sub = "list";
    if (strcmp(sub, "purge") == 0) {
        if (x->npos > 1) {
            fprintf(stderr, "sandboxctl: dead purge takes no argument\n");
            return -1;
        }
        return 0;
    }
    if (strcmp(sub, "replay") == 0 && opt_get(x, "all")) {
        if (x->npos > 1) {
            fprintf(stderr, "sandboxctl: dead replay --all takes no ENTRY\n");
            return -1;
        }
        return 0;
    }
    if (strcmp(sub, "show") == 0) {
        if (x->npos != 2 || !entry_ok(x->pos[1])) {
            fprintf(stderr, "sandboxctl: dead show needs one ENTRY (a stream entry id)\n");
            return -1;
        }
        return 0;
    }
    if (strcmp(sub, "list") == 0) {
        if (x->npos > 1) {
            fprintf(stderr, "sandboxctl: dead list takes no argument\n");
            return -1;
        }
        int64_t v;
        const char *count = opt_get(x, "count"), *after = opt_get(x, "after");
        if (count && parse_num(count, 1, 100000, &v) != 0) {
            fprintf(stderr, "sandboxctl: --count: must be an integer 1..100000, got \"%s\"\n",
                    count);
            return -1;
        }
        if (after && !entry_ok(after)) {
            fprintf(stderr, "sandboxctl: --after: not a stream entry id: \"%s\"\n", after);
            return -1;
        }
        return 0;
    }
    if (strcmp(sub, "replay") == 0) {
        if (x->npos != 2) {
            fprintf(stderr, "sandboxctl: dead replay needs one ENTRY (see `dead list`)\n");
            return -1;
        }
        if (!entry_ok(x->pos[1])) {
            fprintf(stderr, "sandboxctl: not a stream entry id: \"%s\"\n", x->pos[1]);
            return -1;
        }
        return 0;
    }
    fprintf(stderr, "sandboxctl: dead: unknown subcommand \"%s\" (ls, show, replay or purge)\n",
            sub);
    return -1;
}

static void dead_purged(void *arg, int rc, long long n, const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        fail_redis(x, "dead purge", err);
        return;
    }
    if (x->json)
        printf("{\"purged\":%lld}\n", n);
    else
        printf("purged %lld dead letter(s)\n", n);
    finish(x, EXIT_OK);
}

static void dead_shown(void *arg, int rc, const struct client_record *e, size_t n, const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        fail_redis(x, "dead show", err);
        return;
    }
    if (n == 0) {
        fprintf(stderr, "sandboxctl: no dead-letter entry %s\n", x->pos[1]);
        finish(x, EXIT_NOTOK);
        return;
    }
    print_event_json(&e[0]);
    finish(x, EXIT_OK);
}

/* replay --all: the ids listed first, then replayed one at a time. */
static void replay_all_next(struct ctl *x);

static void replayed_one(void *arg, enum client_replay_status st, const char *job,
                         const char *entry)
{
    struct ctl *x = arg;
    const char *dead = x->all_ids[x->all_pos];
    if (st == CLIENT_REPLAY_ERROR) {
        fail_redis(x, "dead replay", entry);
        return;
    }
    if (st == CLIENT_REPLAY_OK) {
        printf("replayed dead entry %s: job %s enqueued as %s\n", dead, *job ? job : "(no id)",
               entry);
        x->all_ok++;
    } else {
        fprintf(stderr, "sandboxctl: dead entry %s not replayed (%s%s%s)\n", dead,
                st == CLIENT_REPLAY_MISSING  ? "gone"
                : st == CLIENT_REPLAY_NO_JOB ? "carries no job"
                                             : "job active again: ",
                st == CLIENT_REPLAY_ACTIVE ? entry : "", "");
        x->all_refused++;
    }
    x->all_pos++;
    replay_all_next(x);
}

static void replay_all_next(struct ctl *x)
{
    if (x->all_pos < x->all_n) {
        client_dead_replay(x->c, x->all_ids[x->all_pos], replayed_one, x);
        return;
    }
    printf("replayed %d, refused %d\n", x->all_ok, x->all_refused);
    finish(x, x->all_refused ? EXIT_NOTOK : EXIT_OK);
}

static void replay_all_listed(void *arg, int rc, const struct client_record *e, size_t n,
                              const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        fail_redis(x, "dead list", err);
        return;
    }
    x->all_ids = xcalloc(n + 1, sizeof(*x->all_ids));
    for (size_t i = 0; i < n; i++)
        x->all_ids[i] = xstrdup(e[i].id);
    x->all_n = (int)n;
    replay_all_next(x);
}

static void run_dead(struct ctl *x)
{
    const char *sub = x->npos ? x->pos[0] : "list";
    if (strcmp(sub, "purge") == 0) {
        client_dead_purge(x->c, dead_purged, x);
        return;
    }
    if (strcmp(sub, "show") == 0) {
        client_dead_get(x->c, x->pos[1], dead_shown, x);
        return;
    }
    if (strcmp(sub, "replay") == 0 && opt_get(x, "all")) {
        client_dead_list(x->c, NULL, CLIENT_SCAN_LIMIT, replay_all_listed, x);
        return;
    }
    if (x->npos == 2) {
        client_dead_replay(x->c, x->pos[1], replayed, x);
        return;
    }
    int64_t count = 100;
    const char *c = opt_get(x, "count");
    if (c)
        parse_num(c, 1, 100000, &count);
    client_dead_list(x->c, opt_get(x, "after"), (int)count, dead_listed, x);
}

/* ---- jobs, workers, queue ---- */

static const char *const job_states[] = {"queued", "running", "delayed", "finished", NULL};

/* Prints records as one JSON object per line: {"<id_key>": id, "<field>": value...}; values
 * that are decimal integers become numbers. */
static void print_records_json(const struct client_record *e, size_t n, const char *id_key)
{
    for (size_t i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, id_key, e[i].id);
        for (size_t k = 0; k < e[i].n; k++) {
            const struct client_field *f = &e[i].f[k];
            int64_t v;
            if (strcmp(f->name, "entry") != 0 && strcmp(f->name, "name") != 0 &&
                parse_num(f->value, 0, INT64_MAX, &v) == 0)
                cJSON_AddNumberToObject(o, f->name, (double)v);
            else
                cJSON_AddStringToObject(o, f->name, f->value);
        }
        char *s = cJSON_PrintUnformatted(o);
        puts(s);
        free(s);
        cJSON_Delete(o);
    }
}

static const char *rec(const struct client_record *e, const char *name)
{
    const char *v = client_record_get(e, name, NULL);
    return v && *v ? v : "-";
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "12.3s ago" / "in 4.0s" from a Unix ms field; "-" when absent. */
static void put_age(const struct client_record *e, const char *name, char *out, size_t len)
{
    const char *v = client_record_get(e, name, NULL);
    int64_t t;
    if (!v || parse_num(v, 0, INT64_MAX, &t) != 0) {
        snprintf(out, len, "-");
        return;
    }
    int64_t d = wall_ms() - t;
    if (d >= 0)
        snprintf(out, len, "%.1fs", (double)d / 1000);
    else
        snprintf(out, len, "in %.1fs", (double)-d / 1000);
}

static void jobs_listed(void *arg, int rc, const struct client_record *e, size_t n, const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        fail_redis(x, "jobs ls", err);
        return;
    }
    if (x->json) {
        print_records_json(e, n, "id");
        finish(x, EXIT_OK);
        return;
    }
    const char *st = opt_get(x, "state") ? opt_get(x, "state") : "queued";
    for (size_t i = 0; i < n; i++) {
        char age[32];
        const char *id = *e[i].id ? e[i].id : "(no id)";
        if (strcmp(st, "queued") == 0) {
            printf("%s thread=%s entry=%s attempt=%s\n", id, rec(&e[i], "thread"),
                   rec(&e[i], "entry"), rec(&e[i], "attempt"));
        } else if (strcmp(st, "running") == 0) {
            put_age(&e[i], "started_at", age, sizeof(age));
            printf("%s thread=%s worker=%s phase=%s attempt=%s elapsed=%s idle_ms=%s "
                   "deliveries=%s\n",
                   id, rec(&e[i], "thread"), rec(&e[i], "worker"), rec(&e[i], "phase"),
                   rec(&e[i], "attempt"), age, rec(&e[i], "idle_ms"), rec(&e[i], "deliveries"));
        } else if (strcmp(st, "delayed") == 0) {
            put_age(&e[i], "due_at", age, sizeof(age));
            printf("%s thread=%s attempt=%s due=%s\n", id, rec(&e[i], "thread"),
                   rec(&e[i], "attempt"), age);
        } else {
            printf("%s thread=%s status=%s worker=%s entry=%s\n", id, rec(&e[i], "thread"),
                   rec(&e[i], "status"), rec(&e[i], "worker"), rec(&e[i], "entry"));
        }
    }
    finish(x, EXIT_OK);
}

static int prepare_jobs(struct ctl *x)
{
    if (x->npos && strcmp(x->pos[0], "ls") != 0) {
        fprintf(stderr, "sandboxctl: jobs: unknown subcommand \"%s\" (ls)\n", x->pos[0]);
        return -1;
    }
    const char *st = opt_get(x, "state");
    int known = st == NULL;
    for (const char *const *s = job_states; st && *s; s++)
        known |= strcmp(st, *s) == 0;
    if (!known) {
        fprintf(stderr,
                "sandboxctl: --state: must be queued, running, delayed or finished, got "
                "\"%s\"\n",
                st);
        return -1;
    }
    const char *ids[] = {opt_get(x, "thread"), opt_get(x, "worker")};
    for (size_t i = 0; i < 2; i++) {
        if (ids[i] && !id_ok(ids[i])) {
            fprintf(stderr, "sandboxctl: --%s: not a valid id: \"%s\"\n", i ? "worker" : "thread",
                    ids[i]);
            return -1;
        }
    }
    int64_t v;
    const char *count = opt_get(x, "count");
    if (count && parse_num(count, 1, CLIENT_SCAN_LIMIT, &v) != 0) {
        fprintf(stderr, "sandboxctl: --count: must be an integer 1..%d, got \"%s\"\n",
                CLIENT_SCAN_LIMIT, count);
        return -1;
    }
    return 0;
}

static void run_jobs(struct ctl *x)
{
    int64_t count = 100;
    const char *c = opt_get(x, "count");
    if (c)
        parse_num(c, 1, CLIENT_SCAN_LIMIT, &count);
    const char *st = opt_get(x, "state");
    client_jobs_list(x->c, st ? st : "queued", opt_get(x, "thread"), opt_get(x, "worker"),
                     (int)count, jobs_listed, x);
}

static void workers_listed(void *arg, int rc, const struct client_record *e, size_t n,
                           const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        fail_redis(x, "workers ls", err);
        return;
    }
    if (x->json) {
        print_records_json(e, n, "name");
        finish(x, EXIT_OK);
        return;
    }
    if (n == 0)
        printf("no live workers\n");
    for (size_t i = 0; i < n; i++) {
        char beat[32], up[32];
        put_age(&e[i], "heartbeat_at", beat, sizeof(beat));
        put_age(&e[i], "started_at", up, sizeof(up));
        printf("%s state=%s in_flight=%s/%s heartbeat=%s ago up=%s version=%s provider=%s "
               "host=%s pid=%s\n",
               e[i].id, rec(&e[i], "state"), rec(&e[i], "in_flight"), rec(&e[i], "concurrency"),
               beat, up, rec(&e[i], "version"), rec(&e[i], "provider"), rec(&e[i], "host"),
               rec(&e[i], "pid"));
    }
    finish(x, EXIT_OK);
}

static void run_workers(struct ctl *x)
{
    client_workers_list(x->c, workers_listed, x);
}

static void queue_set(void *arg, int rc, const char *err)
{
    struct ctl *x = arg;
    int pause = strcmp(x->pos[0], "pause") == 0;
    if (rc != 0) {
        fail_redis(x, pause ? "queue pause" : "queue resume", err);
        return;
    }
    if (x->json)
        printf("{\"paused\":%s}\n", pause ? "true" : "false");
    else
        printf(pause ? "queue {%s} paused: workers read no new jobs; turns in flight finish\n"
                     : "queue {%s} resumed\n",
               x->cfg.prefix);
    finish(x, EXIT_OK);
}

static int prepare_queue(struct ctl *x)
{
    if (strcmp(x->pos[0], "purge") == 0) {
        if (!opt_get(x, "queued")) {
            fprintf(stderr, "sandboxctl: queue purge needs --queued (what to delete)\n");
            return -1;
        }
        return 0;
    }
    if (strcmp(x->pos[0], "pause") != 0 && strcmp(x->pos[0], "resume") != 0) {
        fprintf(stderr, "sandboxctl: queue: unknown subcommand \"%s\" (pause, resume or purge)\n",
                x->pos[0]);
        return -1;
    }
    if (opt_get(x, "queued")) {
        fprintf(stderr, "sandboxctl: --queued goes with queue purge\n");
        return -1;
    }
    return 0;
}

static void queue_purged(void *arg, int rc, long long n, const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        fail_redis(x, "queue purge", err);
        return;
    }
    if (x->json)
        printf("{\"purged\":%lld}\n", n);
    else
        printf("purged %lld queued job(s)\n", n);
    finish(x, EXIT_OK);
}

static void run_queue(struct ctl *x)
{
    if (strcmp(x->pos[0], "purge") == 0) {
        client_queue_purge(x->c, queue_purged, x);
        return;
    }
    client_queue_pause(x->c, strcmp(x->pos[0], "pause") == 0, queue_set, x);
}

static void retried(void *arg, enum client_replay_status st, const char *attempt, const char *entry)
{
    struct ctl *x = arg;
    const char *id = x->pos[0];
    switch (st) {
    case CLIENT_REPLAY_OK:
        if (x->json)
            printf("{\"id\":\"%s\",\"entry\":\"%s\",\"attempt\":%s}\n", id, entry, attempt);
        else
            printf("job %s enqueued again as %s (attempt %s)\n", id, entry, attempt);
        finish(x, EXIT_OK);
        return;
    case CLIENT_REPLAY_MISSING:
        fprintf(stderr, "sandboxctl: no job %s\n", id);
        break;
    case CLIENT_REPLAY_ACTIVE:
        fprintf(stderr,
                "sandboxctl: job %s is %s; only failed, timeout, lost or cancelled jobs are "
                "retried\n",
                id, *entry ? entry : "in an unknown state");
        break;
    case CLIENT_REPLAY_NO_JOB:
        fprintf(stderr,
                "sandboxctl: job %s: its stream entry is gone (trimmed); enqueue it again\n", id);
        break;
    case CLIENT_REPLAY_ERROR:
        fail_redis(x, "retry", entry);
        return;
    }
    finish(x, EXIT_NOTOK);
}

static void run_retry(struct ctl *x)
{
    client_retry(x->c, x->pos[0], retried, x);
}

static void threads_listed(void *arg, int rc, const struct client_record *e, size_t n,
                           const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        fail_redis(x, "threads ls", err);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (x->json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "id", e[i].id);
            for (size_t k = 0; k < e[i].n; k++) {
                const struct client_field *f = &e[i].f[k];
                cJSON *item = NULL;
                if (strcmp(f->name, "snapshot") == 0 && f->value_len)
                    item = cJSON_ParseWithLength(f->value, f->value_len);
                cJSON_AddItemToObject(o, f->name, item ? item : cJSON_CreateString(f->value));
            }
            char *s = cJSON_PrintUnformatted(o);
            puts(s);
            free(s);
            cJSON_Delete(o);
            continue;
        }
        printf("%s organization=%s project=%s provider=%s state=%s sandbox=%s\n", e[i].id,
               rec(&e[i], "organization"), rec(&e[i], "project"), rec(&e[i], "provider"),
               rec(&e[i], "state"), rec(&e[i], "sandbox_id"));
    }
    finish(x, EXIT_OK);
}

/* destroy: the thread's tenant is read first; the destroy job must name the same one. */
static void destroy_thread_read(void *arg, int rc, const struct client_record *h, const char *err)
{
    struct ctl *x = arg;
    if (rc != 0) {
        fail_redis(x, "threads destroy", err);
        return;
    }
    const char *org = client_record_get(h, "organization", NULL);
    const char *proj = client_record_get(h, "project", NULL);
    if (h->n == 0 || !org || !proj) {
        fprintf(stderr, "sandboxctl: no thread %s\n", x->pos[1]);
        finish(x, EXIT_NOTOK);
        return;
    }
    snprintf(x->job_id, sizeof(x->job_id), "destroy-%.90s-%lld", x->pos[1], (long long)wall_ms());
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", x->job_id);
    cJSON_AddStringToObject(j, "thread", x->pos[1]);
    const char *feature = opt_get(x, "feature");
    cJSON_AddStringToObject(j, "feature", feature ? feature : "data-app");
    cJSON *t = cJSON_AddObjectToObject(j, "tenant");
    cJSON_AddStringToObject(t, "organization", org);
    cJSON_AddStringToObject(t, "project", proj);
    cJSON_AddStringToObject(j, "op", "destroy");
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    buf_puts(&x->job_text, text);
    free(text);
    client_enqueue(x->c, x->job_id, x->job_text.data, x->job_text.len, enqueued, x);
}

static int prepare_threads(struct ctl *x)
{
    const char *sub = x->pos[0];
    if (strcmp(sub, "ls") == 0) {
        if (x->npos != 1) {
            fprintf(stderr, "sandboxctl: threads ls takes no argument\n");
            return -1;
        }
        return 0;
    }
    if (strcmp(sub, "show") != 0 && strcmp(sub, "destroy") != 0) {
        fprintf(stderr, "sandboxctl: threads: unknown subcommand \"%s\" (ls, show, destroy)\n",
                sub);
        return -1;
    }
    if (x->npos != 2 || !id_ok(x->pos[1])) {
        fprintf(stderr, "sandboxctl: threads %s needs one valid THREAD id\n", sub);
        return -1;
    }
    const char *f = opt_get(x, "feature");
    if (f && strcmp(f, "data-app") != 0 && strcmp(f, "ai-writeback") != 0) {
        fprintf(stderr, "sandboxctl: --feature: data-app or ai-writeback, got \"%s\"\n", f);
        return -1;
    }
    return 0;
}

static void run_threads(struct ctl *x)
{
    const char *sub = x->pos[0];
    if (strcmp(sub, "ls") == 0)
        client_threads_list(x->c, threads_listed, x);
    else if (strcmp(sub, "show") == 0)
        client_thread_get(x->c, x->pos[1], thread_hash_read, x);
    else
        client_thread_get(x->c, x->pos[1], destroy_thread_read, x);
}

/* ---- main ---- */

static void ready(void *arg, int ok, const char *err)
{
    struct ctl *x = arg;
    if (!ok) {
        char *url = env_url_redact(x->cfg.redis_url);
        fprintf(stderr, "sandboxctl: cannot connect to Redis at %s: %s\n", url, err);
        free(url);
        finish(x, EXIT_REDIS);
        return;
    }
    x->cmd->run(x);
}

/* Splits argv after the command into positional arguments and options. 0, 1 for --help
 * (printed), -1 on a usage error (printed). */
static int parse_args(struct ctl *x, int argc, char **argv)
{
    int only_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!only_pos && strcmp(a, "--") == 0) {
            only_pos = 1;
            continue;
        }
        if (!only_pos && (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)) {
            usage_one(x->cmd, stdout);
            return 1;
        }
        if (only_pos || strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            if (x->npos == MAX_POSITIONAL || x->npos >= x->cmd->max_pos) {
                fprintf(stderr, "sandboxctl %s: unexpected argument \"%s\"\n", x->cmd->name, a);
                return -1;
            }
            x->pos[x->npos++] = a;
            continue;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const char *spec = NULL;
        for (const char *const *o = x->cmd->options; *o && !spec; o++)
            if (strncmp(*o, name, nlen) == 0 && ((*o)[nlen] == '\0' || (*o)[nlen] == '='))
                spec = *o;
        if (!spec) {
            fprintf(stderr, "sandboxctl %s: unknown option --%.*s (see --help)\n", x->cmd->name,
                    (int)nlen, name);
            return -1;
        }
        const char *value = ""; /* a flag's value */
        if (spec[nlen] == '=') {
            if (eq) {
                value = eq + 1;
            } else if (i + 1 < argc) {
                value = argv[++i];
            } else {
                fprintf(stderr, "sandboxctl %s: --%.*s needs a value\n", x->cmd->name, (int)nlen,
                        spec);
                return -1;
            }
        } else if (eq) {
            fprintf(stderr, "sandboxctl %s: --%.*s takes no value\n", x->cmd->name, (int)nlen,
                    name);
            return -1;
        }
        if (x->nopts == (int)(sizeof(x->opts) / sizeof(x->opts[0]))) {
            fprintf(stderr, "sandboxctl %s: too many options\n", x->cmd->name);
            return -1;
        }
        x->opts[x->nopts].name = xstrndup(spec, nlen);
        x->opts[x->nopts].value = value;
        x->nopts++;
    }
    if (x->npos < x->cmd->min_pos) {
        fprintf(stderr, "sandboxctl %s: missing %s (see --help)\n", x->cmd->name, x->cmd->args);
        return -1;
    }
    return 0;
}

/* Command-specific checks before connecting. 0 or -1 (printed). */
static int prepare(struct ctl *x)
{
    const char *name = x->cmd->name;
    x->json = opt_get(x, "json") != NULL;
    if (strcmp(name, "job") == 0 && x->npos == 2) {
        if (strcmp(x->pos[0], "show") != 0) {
            fprintf(stderr, "sandboxctl: job: unknown subcommand \"%s\" (show)\n", x->pos[0]);
            return -1;
        }
        x->pos[0] = x->pos[1];
        x->npos = 1;
    }
    if (strcmp(name, "threads") == 0)
        return prepare_threads(x);
    if (x->cmd->min_pos == 1 && !id_ok(x->pos[0])) {
        fprintf(stderr, "sandboxctl %s: not a valid id: \"%s\" (1..128 of A-Z a-z 0-9 _ . : -)\n",
                name, x->pos[0]);
        return -1;
    }
    if (strcmp(name, "enqueue") == 0)
        return prepare_enqueue(x);
    if (strcmp(name, "watch") == 0 || strcmp(name, "wait") == 0)
        return prepare_follow(x);
    if (strcmp(name, "dead") == 0)
        return prepare_dead(x);
    if (strcmp(name, "jobs") == 0)
        return prepare_jobs(x);
    if (strcmp(name, "queue") == 0)
        return prepare_queue(x);
    if (strcmp(name, "workers") == 0 && x->npos && strcmp(x->pos[0], "ls") != 0) {
        fprintf(stderr, "sandboxctl: workers: unknown subcommand \"%s\" (ls)\n", x->pos[0]);
        return -1;
    }
    if (strcmp(name, "cancel") == 0) {
        x->ttl_s = x->cfg.job_ttl_s;
        const char *t = opt_get(x, "ttl-s");
        if (t && parse_num(t, 1, 31536000, &x->ttl_s) != 0) {
            fprintf(stderr, "sandboxctl: --ttl-s: must be an integer 1..31536000, got \"%s\"\n", t);
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct ctl x;
    memset(&x, 0, sizeof(x));
    buf_init(&x.job_text);
    x.exit_code = EXIT_USAGE;
    char err[512] = "";
    int cfg_loaded = 0;

    /* Global options, taken out of argv wherever they are (before a "--"). They override the
     * environment the configuration is read from. */
    int gargc = 1;
    char **gargv = xcalloc((size_t)argc + 1, sizeof(*gargv));
    gargv[0] = argv[0];
    int dashdash = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL, *var = NULL;
        if (!dashdash && strcmp(a, "--") == 0)
            dashdash = 1;
        if (!dashdash && strcmp(a, "--man") == 0) {
            print_man(stdout);
            free(gargv);
            return EXIT_OK;
        }
        if (!dashdash && strcmp(a, "--completion") == 0) {
            const char *sh = i + 1 < argc ? argv[i + 1] : "";
            free(gargv);
            if (strcmp(sh, "bash") != 0 && strcmp(sh, "zsh") != 0) {
                fprintf(stderr, "sandboxctl: --completion bash|zsh\n");
                return EXIT_USAGE;
            }
            print_completion(stdout, sh);
            return EXIT_OK;
        }
        if (!dashdash && strcmp(a, "--version") == 0) {
            printf("sandboxctl %s\n", SANDBOX_WORKER_VERSION);
            free(gargv);
            return EXIT_OK;
        }
        if (!dashdash &&
            (strcmp(a, "-u") == 0 || strcmp(a, "--redis-url") == 0 || strcmp(a, "--prefix") == 0)) {
            var = strcmp(a, "--prefix") == 0 ? "SANDBOX_QUEUE_PREFIX" : "REDIS_URL";
            if (i + 1 >= argc) {
                fprintf(stderr, "sandboxctl: %s needs a value\n", a);
                free(gargv);
                return EXIT_USAGE;
            }
            val = argv[++i];
        } else if (!dashdash && strncmp(a, "--redis-url=", 12) == 0) {
            var = "REDIS_URL", val = a + 12;
        } else if (!dashdash && strncmp(a, "--prefix=", 9) == 0) {
            var = "SANDBOX_QUEUE_PREFIX", val = a + 9;
        }
        if (var) {
            setenv(var, val, 1);
            continue;
        }
        gargv[gargc++] = argv[i];
    }
    argc = gargc;
    argv = gargv;

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        free(gargv);
        usage_all(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    for (size_t i = 0; i < NCOMMANDS && !x.cmd; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            x.cmd = &commands[i];
    if (!x.cmd) {
        fprintf(stderr, "sandboxctl: unknown command \"%s\" (see sandboxctl --help)\n", argv[1]);
        free(gargv);
        return EXIT_USAGE;
    }
    int rc = parse_args(&x, argc - 2, argv + 2);
    if (rc != 0) {
        x.exit_code = rc > 0 ? EXIT_OK : EXIT_USAGE;
        goto out;
    }
    if (config_load(&x.cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "sandboxctl: %s\n", err);
        goto out;
    }
    cfg_loaded = 1;
    /* Errors only by default: the CLI reports failures itself, one line each. */
    log_setup(getenv("LIGHTDASH_LOG_LEVEL") ? x.cfg.log_level : LOG_ERROR, LOG_FMT_PLAIN, NULL);
    if (prepare(&x) != 0)
        goto out;

    x.base = event_base_new();
    if (!x.base) {
        fprintf(stderr, "sandboxctl: cannot create the event loop\n");
        x.exit_code = EXIT_REDIS;
        goto out;
    }
    struct client_opts co = {
        .redis = config_redis_opts(&x.cfg),
        .prefix = x.cfg.prefix,
        .job_ttl_s = x.cfg.job_ttl_s,
    };
    x.c = client_new(x.base, &co, ready, &x, err, sizeof(err));
    if (!x.c) {
        fprintf(stderr, "sandboxctl: %s\n", err);
        x.exit_code = EXIT_REDIS;
        goto out;
    }
    x.exit_code = EXIT_REDIS; /* unless a command finishes */
    event_base_dispatch(x.base);
out:
    fflush(stdout);
    client_free(x.c);
    if (x.timer)
        event_free(x.timer);
    if (x.spinner)
        event_free(x.spinner);
    if (x.base)
        event_base_free(x.base);
    for (int i = 0; i < x.nopts; i++)
        free(x.opts[i].name);
    free(x.final_status);
    free(x.final_result);
    for (int i = 0; x.all_ids && i < x.all_n; i++)
        free(x.all_ids[i]);
    free(x.all_ids);
    buf_release(&x.job_text);
    if (cfg_loaded)
        config_release(&x.cfg);
    free(gargv);
    return x.exit_code;
}
