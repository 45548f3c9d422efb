/* A turn job: parsing and validation of the JSON a producer XADDs (docs/protocol.md).
 *
 * job_parse never accepts unknown fields, wrong types, or values out of range: it fails
 * with the offending field's path (e.g. "steps[2].timeout_ms") and a message, which the
 * worker turns into a `rejected` result and a dead-letter entry. */
#ifndef SW_WORKER_JOB_H
#define SW_WORKER_JOB_H

#include <stddef.h>
#include <stdint.h>

enum job_op { JOB_OP_TURN = 0, JOB_OP_DESTROY };
enum job_feature { JOB_FEATURE_DATA_APP = 0, JOB_FEATURE_AI_WRITEBACK };
enum job_after { JOB_AFTER_SUSPEND = 0, JOB_AFTER_DESTROY };
enum step_kind { STEP_WRITE = 0, STEP_RUN, STEP_READ, STEP_UPLOAD, STEP_RESTORE };
enum step_when { STEP_WHEN_ALWAYS = 0, STEP_WHEN_FRESH, STEP_WHEN_RESUMED };

struct job_file {
    char *path; /* absolute path in the sandbox */
    char *data; /* decoded content (base64 when "encoding":"base64"), binary-safe */
    size_t len;
    int mode; /* "mode": octal string like "0644" or integer; default 0644 */
};

struct job_env {
    char *name;
    char *value;
};

struct job_step {
    enum step_kind kind;
    char *name; /* optional "name"; default "<kind>-<index>" */
    /* write */
    struct job_file *files;
    size_t nfiles;
    /* run */
    char *cmd;
    char *cwd;           /* may be NULL */
    struct job_env *env; /* "env": object of string values */
    size_t nenv;
    int64_t timeout_ms; /* 0: worker's default */
    int allow_failure;  /* a non-zero exit does not fail the turn */
    enum step_when when;
    /* read */
    char *path;
    size_t max_bytes; /* 0: worker's default */
    /* upload / restore */
    char **paths; /* upload: paths to tar; NULL-terminated */
    char *key;    /* object key */
    char *dest;   /* restore: directory to extract into */
};

struct job {
    char *id;     /* 1..128 of [A-Za-z0-9_.:-] */
    char *thread; /* same charset */
    enum job_feature feature;
    char *organization; /* tenant.organization, 1..128 printable */
    char *project;      /* tenant.project */
    enum job_op op;
    struct job_step *steps;
    size_t nsteps;     /* 0..256; destroy jobs must have none */
    char **ws_include; /* workspace.include (absolute paths), NULL-terminated; NULL when absent */
    char **ws_exclude;
    enum job_after after;
    struct job_env *secrets; /* "secrets": object name → value (name [A-Z_][A-Z0-9_]*) */
    size_t nsecrets;
    char **inherit_env;  /* names, NULL-terminated; NULL when absent */
    int64_t deadline_ms; /* whole-turn budget from start; 0: worker default */
    int max_attempts;    /* 0: worker default; else 1..100 */
};

/* lim may be NULL: 8 MiB, no deadline cap beyond 2^53, nothing inheritable, no result
 * limit. */
struct job_limits {
    size_t max_job_bytes;             /* 0: 8 MiB */
    int64_t max_deadline_ms;          /* cap for deadline_ms and timeout_ms; <= 0: none */
    const char *const *inherit_allow; /* names an operator allows; NULL-terminated; may be NULL */
    size_t read_cap_bytes;            /* a read step's cap without max_bytes; 0: 1 MiB */
    size_t max_result_bytes; /* the read steps' caps must add up to at most this; 0: no check */
};

/* Shown to producers as "<field>: <message>" (just the message when field is ""). The
 * message never repeats the field, and never quotes secrets, env values or file content. */
struct job_error {
    char field[128]; /* "" when the whole document is at fault */
    char message[256];
};

/* Parses and validates. 0 with *out set (free with job_free), or -1 with err filled.
 * Never prints secrets in err. Besides the format: the document must be valid UTF-8, every
 * secret at least MASK_MIN_LEN bytes (lib/mask.h) and not "***" (a masked dead letter), and
 * the read steps' caps must fit lim->max_result_bytes. */
int job_parse(const char *json, size_t len, const struct job_limits *lim, struct job **out,
              struct job_error *err);
void job_free(struct job *job);
const char *job_step_kind_name(enum step_kind k);
const char *job_feature_name(enum job_feature f);

/* Best effort for a document that failed to parse: copies the "id" and "thread" string
 * fields when present and well formed (so a rejection can be addressed); "" otherwise. */
void job_peek_ids(const char *json, size_t len, char *id, size_t idlen, char *thread,
                  size_t threadlen);

/* For a dead letter: the job text with every member of "secrets" replaced by "***", as a
 * malloc'd NUL-terminated copy (length in *outlen). A document that is not a JSON object,
 * or has no secret to mask, is returned unchanged, byte for byte: text that does not parse
 * cannot be searched for secrets. */
char *job_redact_secrets(const char *json, size_t len, size_t *outlen);

#endif
