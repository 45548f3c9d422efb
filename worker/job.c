#include "worker/job.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "lib/buf.h"
#include "lib/jsonx.h"
#include "lib/mask.h"
#include "lib/utf8.h"

/* Limits of the job format (docs/protocol.md). Sizes in bytes. */
#define ID_MAX            128
#define TENANT_MAX        128
#define STEPS_MAX         256
#define STEP_NAME_MAX     64
#define FILES_MAX         1024
#define PATH_MAX_BYTES    4096
#define CMD_MAX           (1024 * 1024)
#define ENV_NAME_MAX      128
#define ENV_VALUE_MAX     (64 * 1024)
#define ENV_MAX           256
#define SECRETS_MAX       64
#define INHERIT_MAX       64
#define READ_MAX_BYTES    (64LL * 1024 * 1024)
#define UPLOAD_PATHS_MAX  256
#define KEY_MAX           1024
#define WORKSPACE_MAX     256
#define ATTEMPTS_MAX      100
#define MODE_MAX          07777
#define MODE_DEFAULT      0644
#define DEFAULT_JOB_BYTES (8u * 1024 * 1024)
#define DEFAULT_READ_CAP  (1024u * 1024)

static const char *const step_kind_names[] = {"write", "run", "read", "upload", "restore", NULL};
static const char *const feature_names[] = {"data-app", "ai-writeback", NULL};
static const char *const op_names[] = {"turn", "destroy", NULL};
static const char *const after_names[] = {"suspend", "destroy", NULL};
static const char *const when_names[] = {"always", "fresh", "resumed", NULL};
static const char *const encoding_names[] = {"utf8", "base64", NULL};

static const char *const job_fields[] = {
    "id",    "thread",  "feature",     "tenant",      "op",           "steps", "workspace",
    "after", "secrets", "inherit_env", "deadline_ms", "max_attempts", NULL};
static const char *const tenant_fields[] = {"organization", "project", NULL};
static const char *const workspace_fields[] = {"include", "exclude", NULL};
static const char *const file_fields[] = {"path", "content", "encoding", "mode", NULL};
/* Per step kind, besides the common "type", "name", "when". */
static const char *const write_fields[] = {"type", "name", "when", "files", NULL};
static const char *const run_fields[] = {"type", "name",       "when",          "cmd", "cwd",
                                         "env",  "timeout_ms", "allow_failure", NULL};
static const char *const read_fields[] = {"type", "name", "when", "path", "max_bytes", NULL};
static const char *const upload_fields[] = {"type", "name", "when", "paths", "key", NULL};
static const char *const restore_fields[] = {"type", "name", "when", "key", "dest", NULL};
static const char *const any_step_fields[] = {
    "type",          "name", "when",      "files", "cmd", "cwd",  "env", "timeout_ms",
    "allow_failure", "path", "max_bytes", "paths", "key", "dest", NULL};
static const char *const *const step_fields[] = {write_fields, run_fields, read_fields,
                                                 upload_fields, restore_fields};

/* String rules, each with the message shown when a value breaks it. */
enum str_rule {
    STR_ANY = 0,   /* any bytes (NUL and control characters are already refused by the parser) */
    STR_ID,        /* [A-Za-z0-9_.:-] */
    STR_PRINTABLE, /* ASCII 0x20..0x7e */
    STR_ENV_NAME,  /* [A-Z_][A-Z0-9_]* */
    STR_STEP_NAME, /* [A-Za-z0-9_.-] */
    STR_ABS_PATH,  /* starts with '/', no ".." component */
    STR_KEY,       /* object key: printable, no leading '/', no ".." segment */
};

/* Validation state: the current field path and where the first error goes. */
struct v {
    const struct job_limits *lim;
    int64_t max_deadline_ms;
    struct job_error *err;
    struct jsonx_path path;
};

static int fail(struct v *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Records the first error at the current path; always returns -1. */
static int fail(struct v *v, const char *fmt, ...)
{
    va_list ap;
    snprintf(v->err->field, sizeof v->err->field, "%s", v->path.s);
    va_start(ap, fmt);
    vsnprintf(v->err->message, sizeof v->err->message, fmt, ap);
    va_end(ap);
    return -1;
}

static int fail_at(struct v *v, const char *key, const char *msg)
{
    size_t mark = jsonx_path_key(&v->path, key);
    fail(v, "%s", msg);
    jsonx_path_pop(&v->path, mark);
    return -1;
}

static int in_list(const char *s, const char *const *list)
{
    for (; list && *list; list++)
        if (strcmp(s, *list) == 0)
            return 1;
    return 0;
}

static int is_id_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == ':' || c == '-';
}

static int env_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > ENV_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int ok = (c >= 'A' && c <= 'Z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

/* 1 when some '/'-separated component of s is exactly "..". */
static int has_dotdot(const char *s)
{
    const char *p = s;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return 1;
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

/* Checks a string value at the current path against length bounds (bytes) and a rule. */
static int check_str(struct v *v, const cJSON *item, size_t min, size_t max, enum str_rule rule)
{
    if (!cJSON_IsString(item) || !item->valuestring)
        return fail(v, "must be a string, got %s", jsonx_type_name(item));
    const char *s = item->valuestring;
    size_t n = strlen(s);
    if (n < min || n > max) {
        if (min == 1 && n == 0)
            return fail(v, "must not be empty");
        if (min <= 1)
            return fail(v, "must be at most %zu bytes, got %zu", max, n);
        return fail(v, "must be %zu..%zu bytes, got %zu", min, max, n);
    }
    switch (rule) {
    case STR_ANY:
        break;
    case STR_ID:
        for (size_t i = 0; i < n; i++)
            if (!is_id_char((unsigned char)s[i]))
                return fail(v, "must contain only A-Z a-z 0-9 _ . : -");
        break;
    case STR_STEP_NAME:
        for (size_t i = 0; i < n; i++)
            if (!is_id_char((unsigned char)s[i]) || s[i] == ':')
                return fail(v, "must contain only A-Z a-z 0-9 _ . -");
        break;
    case STR_PRINTABLE:
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
                return fail(v, "must contain only printable ASCII");
        break;
    case STR_ENV_NAME:
        if (!env_name_ok(s))
            return fail(v, "must be an environment variable name ([A-Z_][A-Z0-9_]*)");
        break;
    case STR_ABS_PATH:
        if (s[0] != '/')
            return fail(v, "must be an absolute path");
        if (has_dotdot(s))
            return fail(v, "must not contain a \"..\" component");
        break;
    case STR_KEY:
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
                return fail(v, "must contain only printable ASCII");
        if (s[0] == '/')
            return fail(v, "must not start with \"/\"");
        if (has_dotdot(s))
            return fail(v, "must not contain a \"..\" segment");
        break;
    }
    return 0;
}

/* obj[key] as a string copy into *out (NULL when absent and optional). */
static int get_str(struct v *v, const cJSON *obj, const char *key, int required, size_t min,
                   size_t max, enum str_rule rule, char **out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item)
        return required ? fail_at(v, key, "is required") : 0;
    size_t mark = jsonx_path_key(&v->path, key);
    int rc = check_str(v, item, min, max, rule);
    jsonx_path_pop(&v->path, mark);
    if (rc == 0)
        *out = xstrdup(item->valuestring);
    return rc;
}

/* obj[key] as an integer in [min, max]; *out untouched when absent. */
static int get_int(struct v *v, const cJSON *obj, const char *key, int64_t min, int64_t max,
                   int64_t *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item)
        return 0;
    size_t mark = jsonx_path_key(&v->path, key);
    int rc = 0;
    switch (jsonx_int64(item, min, max, out)) {
    case JSONX_INT_OK:
        break;
    case JSONX_INT_TYPE:
        rc = cJSON_IsNumber(item) ? fail(v, "must be an integer, got a fraction")
                                  : fail(v, "must be an integer, got %s", jsonx_type_name(item));
        break;
    case JSONX_INT_RANGE:
        rc = fail(v, "must be an integer between %lld and %lld", (long long)min, (long long)max);
        break;
    }
    jsonx_path_pop(&v->path, mark);
    return rc;
}

static int get_bool(struct v *v, const cJSON *obj, const char *key, int *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item)
        return 0;
    if (!cJSON_IsBool(item)) {
        size_t mark = jsonx_path_key(&v->path, key);
        fail(v, "must be a boolean, got %s", jsonx_type_name(item));
        jsonx_path_pop(&v->path, mark);
        return -1;
    }
    *out = cJSON_IsTrue(item);
    return 0;
}

/* Checks a string at the current path is one of names; *out = its index. */
static int check_enum(struct v *v, const cJSON *item, const char *const *names, int *out)
{
    struct buf choices;
    int rc = -1;
    buf_init(&choices);
    for (int i = 0; names[i]; i++) {
        if (cJSON_IsString(item) && strcmp(item->valuestring, names[i]) == 0) {
            *out = i;
            rc = 0;
            goto out;
        }
        buf_printf(&choices, "%s\"%s\"", i ? ", " : "", names[i]);
    }
    if (!cJSON_IsString(item)) {
        fail(v, "must be a string, one of %s; got %s", choices.data, jsonx_type_name(item));
        goto out;
    }
    /* Echo the bad value only when it is short and plainly not a secret-bearing text. */
    const char *s = item->valuestring;
    size_t n = strlen(s);
    int echo = n > 0 && n <= 32;
    for (size_t i = 0; echo && i < n; i++)
        echo = is_id_char((unsigned char)s[i]);
    if (echo)
        fail(v, "must be one of %s, got \"%s\"", choices.data, s);
    else
        fail(v, "must be one of %s", choices.data);
out:
    buf_release(&choices);
    return rc;
}

static int get_enum(struct v *v, const cJSON *obj, const char *key, int required,
                    const char *const *names, int *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item)
        return required ? fail_at(v, key, "is required") : 0;
    size_t mark = jsonx_path_key(&v->path, key);
    int rc = check_enum(v, item, names, out);
    jsonx_path_pop(&v->path, mark);
    return rc;
}

/* Every member of obj must be in allowed, once. A member in known_elsewhere (a field of
 * another step kind) gets a clearer message naming `what`. Stops at the first offender, so
 * the duplicate scan is bounded by the number of allowed fields. */
static int check_fields(struct v *v, const cJSON *obj, const char *const *allowed,
                        const char *const *known_elsewhere, const char *what)
{
    for (const cJSON *m = obj->child; m; m = m->next) {
        const char *k = m->string ? m->string : "";
        if (!in_list(k, allowed)) {
            if (known_elsewhere && in_list(k, known_elsewhere)) {
                size_t mark = jsonx_path_key(&v->path, k);
                fail(v, "not allowed in a %s", what);
                jsonx_path_pop(&v->path, mark);
                return -1;
            }
            return fail_at(v, k, "unknown field");
        }
        for (const cJSON *p = obj->child; p != m; p = p->next)
            if (p->string && strcmp(p->string, k) == 0)
                return fail_at(v, k, "duplicate field");
    }
    return 0;
}

/* Fetches obj[key] expecting an object; *out NULL when absent and optional. */
static int get_object(struct v *v, const cJSON *obj, const char *key, int required,
                      const cJSON **out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!item)
        return required ? fail_at(v, key, "is required") : 0;
    if (!cJSON_IsObject(item)) {
        size_t mark = jsonx_path_key(&v->path, key);
        fail(v, "must be an object, got %s", jsonx_type_name(item));
        jsonx_path_pop(&v->path, mark);
        return -1;
    }
    *out = item;
    return 0;
}

/* Fetches obj[key] expecting an array of min..max elements. */
static int get_array(struct v *v, const cJSON *obj, const char *key, int required, size_t min,
                     size_t max, const cJSON **out, size_t *count)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    *count = 0;
    if (!item)
        return required ? fail_at(v, key, "is required") : 0;
    size_t mark = jsonx_path_key(&v->path, key);
    int rc = 0;
    size_t n = 0;
    if (!cJSON_IsArray(item)) {
        rc = fail(v, "must be an array, got %s", jsonx_type_name(item));
        goto out;
    }
    for (const cJSON *e = item->child; e; e = e->next)
        n++;
    if (n < min || n > max) {
        rc = min > 0 ? fail(v, "must have %zu..%zu elements, got %zu", min, max, n)
                     : fail(v, "must have at most %zu elements, got %zu", max, n);
        goto out;
    }
    *out = item;
    *count = n;
out:
    jsonx_path_pop(&v->path, mark);
    return rc;
}

/* obj[key] as an array of strings → NULL-terminated list (NULL when absent). */
static int get_str_list(struct v *v, const cJSON *obj, const char *key, int required, size_t min,
                        size_t max, size_t maxlen, enum str_rule rule, char ***out)
{
    const cJSON *arr;
    size_t n;
    if (get_array(v, obj, key, required, min, max, &arr, &n) != 0)
        return -1;
    if (!arr)
        return 0;
    char **list = xcalloc(n + 1, sizeof *list);
    *out = list;
    size_t mark = jsonx_path_key(&v->path, key);
    size_t i = 0;
    int rc = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
        size_t m2 = jsonx_path_index(&v->path, i);
        rc = check_str(v, e, 1, maxlen, rule);
        jsonx_path_pop(&v->path, m2);
        if (rc != 0)
            break;
        list[i] = xstrdup(e->valuestring);
    }
    jsonx_path_pop(&v->path, mark);
    return rc;
}

/* obj[key] as an object of NAME → string (env, secrets). A secret (is_secret) must be
 * long enough to be masked: a shorter one would reach output, events and results in clear. */
static int get_env_map(struct v *v, const cJSON *obj, const char *key, size_t max, int is_secret,
                       struct job_env **out, size_t *count)
{
    const cJSON *map;
    if (get_object(v, obj, key, 0, &map) != 0)
        return -1;
    if (!map)
        return 0;
    size_t mark = jsonx_path_key(&v->path, key);
    int rc = 0;
    size_t n = 0;
    for (const cJSON *m = map->child; m; m = m->next)
        n++;
    if (n > max) {
        rc = fail(v, "must have at most %zu entries, got %zu", max, n);
        goto out;
    }
    const cJSON *dup = jsonx_find_duplicate(map);
    if (dup) {
        rc = fail_at(v, dup->string, "duplicate name");
        goto out;
    }
    *out = xcalloc(n ? n : 1, sizeof **out);
    for (const cJSON *m = map->child; m; m = m->next) {
        size_t m2 = jsonx_path_key(&v->path, m->string);
        if (!env_name_ok(m->string))
            rc = fail(v, "name must match [A-Z_][A-Z0-9_]* (1..%d bytes)", ENV_NAME_MAX);
        else if (!cJSON_IsString(m))
            rc = fail(v, "must be a string, got %s", jsonx_type_name(m));
        else if (strlen(m->valuestring) > ENV_VALUE_MAX)
            rc = fail(v, "value must be at most %d bytes", ENV_VALUE_MAX);
        else if (is_secret && strcmp(m->valuestring, MASK_TEXT) == 0)
            rc = fail(v,
                      "value is masked (\"%s\"): dead letters keep no secrets, enqueue the "
                      "job again with its secret values",
                      MASK_TEXT);
        else if (is_secret && strlen(m->valuestring) < MASK_MIN_LEN)
            rc = fail(v, "value must be at least %d bytes (a shorter secret cannot be masked)",
                      MASK_MIN_LEN);
        jsonx_path_pop(&v->path, m2);
        if (rc != 0)
            break;
        (*out)[*count].name = xstrdup(m->string);
        (*out)[*count].value = xstrdup(m->valuestring);
        (*count)++;
    }
out:
    jsonx_path_pop(&v->path, mark);
    return rc;
}

/* "mode": an octal string ("0644", "755") or an integer 0..07777. */
static int get_mode(struct v *v, const cJSON *obj, int *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, "mode");
    *out = MODE_DEFAULT;
    if (!item)
        return 0;
    if (cJSON_IsNumber(item)) {
        int64_t m;
        if (jsonx_int64(item, 0, MODE_MAX, &m) != JSONX_INT_OK)
            return fail_at(v, "mode", "must be an integer between 0 and 4095 (07777)");
        *out = (int)m;
        return 0;
    }
    if (!cJSON_IsString(item))
        return fail_at(v, "mode", "must be an octal string like \"0644\" or an integer");
    const char *s = item->valuestring;
    size_t n = strlen(s);
    long m = 0;
    int ok = n >= 1 && n <= 5;
    for (size_t i = 0; ok && i < n; i++) {
        ok = s[i] >= '0' && s[i] <= '7';
        m = m * 8 + (s[i] - '0');
    }
    if (!ok || m > MODE_MAX)
        return fail_at(v, "mode", "must be an octal string like \"0644\" (at most \"7777\")");
    *out = (int)m;
    return 0;
}

static int parse_file(struct v *v, const cJSON *f, struct job_file *out)
{
    if (!cJSON_IsObject(f))
        return fail(v, "must be an object, got %s", jsonx_type_name(f));
    if (check_fields(v, f, file_fields, NULL, NULL) != 0)
        return -1;
    if (get_str(v, f, "path", 1, 1, PATH_MAX_BYTES, STR_ABS_PATH, &out->path) != 0)
        return -1;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(f, "content");
    if (!content)
        return fail_at(v, "content", "is required");
    if (!cJSON_IsString(content)) {
        char msg[64];
        snprintf(msg, sizeof msg, "must be a string, got %s", jsonx_type_name(content));
        return fail_at(v, "content", msg);
    }
    int enc = 0;
    if (get_enum(v, f, "encoding", 0, encoding_names, &enc) != 0)
        return -1;
    const char *text = content->valuestring;
    size_t n = strlen(text);
    if (enc == 1) {
        struct buf b;
        buf_init(&b);
        if (jsonx_base64_decode(text, n, &b) != 0) {
            buf_release(&b);
            return fail_at(v, "content", "is not valid base64 (RFC 4648, padded, no whitespace)");
        }
        out->len = b.len;
        out->data = buf_detach(&b);
    } else {
        out->len = n;
        out->data = xstrdup(text);
    }
    return get_mode(v, f, &out->mode);
}

static int parse_write(struct v *v, const cJSON *s, struct job_step *st)
{
    const cJSON *arr;
    size_t n;
    if (get_array(v, s, "files", 1, 1, FILES_MAX, &arr, &n) != 0)
        return -1;
    st->files = xcalloc(n, sizeof *st->files);
    size_t mark = jsonx_path_key(&v->path, "files");
    int rc = 0;
    for (const cJSON *f = arr->child; f; f = f->next) {
        size_t m2 = jsonx_path_index(&v->path, st->nfiles);
        rc = parse_file(v, f, &st->files[st->nfiles]);
        st->nfiles++; /* counted even on failure so job_free releases partial fields */
        jsonx_path_pop(&v->path, m2);
        if (rc != 0)
            break;
    }
    jsonx_path_pop(&v->path, mark);
    return rc;
}

static int parse_run(struct v *v, const cJSON *s, struct job_step *st)
{
    if (get_str(v, s, "cmd", 1, 1, CMD_MAX, STR_ANY, &st->cmd) != 0 ||
        get_str(v, s, "cwd", 0, 1, PATH_MAX_BYTES, STR_ABS_PATH, &st->cwd) != 0 ||
        get_env_map(v, s, "env", ENV_MAX, 0, &st->env, &st->nenv) != 0 ||
        get_int(v, s, "timeout_ms", 1, v->max_deadline_ms, &st->timeout_ms) != 0 ||
        get_bool(v, s, "allow_failure", &st->allow_failure) != 0)
        return -1;
    return 0;
}

static int parse_read(struct v *v, const cJSON *s, struct job_step *st)
{
    int64_t max = 0;
    if (get_str(v, s, "path", 1, 1, PATH_MAX_BYTES, STR_ABS_PATH, &st->path) != 0 ||
        get_int(v, s, "max_bytes", 1, READ_MAX_BYTES, &max) != 0)
        return -1;
    st->max_bytes = (size_t)max;
    return 0;
}

static int parse_upload(struct v *v, const cJSON *s, struct job_step *st)
{
    if (get_str_list(v, s, "paths", 1, 1, UPLOAD_PATHS_MAX, PATH_MAX_BYTES, STR_ABS_PATH,
                     &st->paths) != 0 ||
        get_str(v, s, "key", 1, 1, KEY_MAX, STR_KEY, &st->key) != 0)
        return -1;
    return 0;
}

static int parse_restore(struct v *v, const cJSON *s, struct job_step *st)
{
    if (get_str(v, s, "key", 1, 1, KEY_MAX, STR_KEY, &st->key) != 0 ||
        get_str(v, s, "dest", 1, 1, PATH_MAX_BYTES, STR_ABS_PATH, &st->dest) != 0)
        return -1;
    return 0;
}

static int parse_step(struct v *v, const cJSON *s, size_t index, struct job_step *st)
{
    if (!cJSON_IsObject(s))
        return fail(v, "must be an object, got %s", jsonx_type_name(s));
    int kind = 0;
    if (get_enum(v, s, "type", 1, step_kind_names, &kind) != 0)
        return -1;
    st->kind = (enum step_kind)kind;
    char what[32];
    snprintf(what, sizeof what, "%s step", step_kind_names[kind]);
    if (check_fields(v, s, step_fields[kind], any_step_fields, what) != 0)
        return -1;
    int when = 0;
    if (get_str(v, s, "name", 0, 1, STEP_NAME_MAX, STR_STEP_NAME, &st->name) != 0 ||
        get_enum(v, s, "when", 0, when_names, &when) != 0)
        return -1;
    st->when = (enum step_when)when;
    if (!st->name) {
        char def[48];
        snprintf(def, sizeof def, "%s-%zu", step_kind_names[kind], index);
        st->name = xstrdup(def);
    }
    switch (st->kind) {
    case STEP_WRITE:
        return parse_write(v, s, st);
    case STEP_RUN:
        return parse_run(v, s, st);
    case STEP_READ:
        return parse_read(v, s, st);
    case STEP_UPLOAD:
        return parse_upload(v, s, st);
    case STEP_RESTORE:
        return parse_restore(v, s, st);
    }
    return 0;
}

/* The read steps' caps together must fit in a result (WORKER_MAX_RESULT_BYTES): checked
 * here so a job that cannot fit is refused before it runs. Encoding and run steps' output
 * tails are accounted for while the turn runs. */
static int check_read_caps(struct v *v, const struct job *job)
{
    size_t limit = v->lim ? v->lim->max_result_bytes : 0;
    size_t def = v->lim && v->lim->read_cap_bytes ? v->lim->read_cap_bytes : DEFAULT_READ_CAP;
    uint64_t sum = 0;
    if (!limit)
        return 0;
    for (size_t i = 0; i < job->nsteps; i++) {
        const struct job_step *st = &job->steps[i];
        if (st->kind != STEP_READ)
            continue;
        sum += st->max_bytes ? st->max_bytes : def;
        if (sum <= limit)
            continue;
        size_t mark = jsonx_path_key(&v->path, "steps");
        size_t m2 = jsonx_path_index(&v->path, i);
        size_t m3 = jsonx_path_key(&v->path, "max_bytes");
        fail(v,
             "the read steps' caps add up to %llu bytes here, more than a result may hold "
             "(WORKER_MAX_RESULT_BYTES %zu)%s",
             (unsigned long long)sum, limit,
             st->max_bytes ? "" : "; this step uses the default cap (WORKER_READ_CAP_BYTES)");
        jsonx_path_pop(&v->path, m3);
        jsonx_path_pop(&v->path, m2);
        jsonx_path_pop(&v->path, mark);
        return -1;
    }
    return 0;
}

static int parse_steps(struct v *v, const cJSON *root, struct job *job)
{
    const cJSON *arr;
    size_t n;
    if (get_array(v, root, "steps", 0, 0, STEPS_MAX, &arr, &n) != 0)
        return -1;
    if (!arr || n == 0)
        return 0;
    if (job->op == JOB_OP_DESTROY)
        return fail_at(v, "steps", "must be empty for a destroy job");
    job->steps = xcalloc(n, sizeof *job->steps);
    size_t mark = jsonx_path_key(&v->path, "steps");
    int rc = 0;
    for (const cJSON *s = arr->child; s && rc == 0; s = s->next) {
        size_t i = job->nsteps++;
        size_t m2 = jsonx_path_index(&v->path, i);
        rc = parse_step(v, s, i, &job->steps[i]);
        /* Step names (given or defaulted) address events and results: unique. */
        for (size_t j = 0; rc == 0 && j < i; j++) {
            if (strcmp(job->steps[j].name, job->steps[i].name) == 0) {
                char msg[64];
                snprintf(msg, sizeof msg, "same name as steps[%zu]", j);
                rc = fail_at(v, "name", msg);
            }
        }
        jsonx_path_pop(&v->path, m2);
    }
    jsonx_path_pop(&v->path, mark);
    if (rc == 0)
        rc = check_read_caps(v, job);
    return rc;
}

static int parse_tenant(struct v *v, const cJSON *root, struct job *job)
{
    const cJSON *t;
    if (get_object(v, root, "tenant", 1, &t) != 0)
        return -1;
    size_t mark = jsonx_path_key(&v->path, "tenant");
    int rc = -1;
    if (check_fields(v, t, tenant_fields, NULL, NULL) == 0 &&
        get_str(v, t, "organization", 1, 1, TENANT_MAX, STR_PRINTABLE, &job->organization) == 0 &&
        get_str(v, t, "project", 1, 1, TENANT_MAX, STR_PRINTABLE, &job->project) == 0)
        rc = 0;
    jsonx_path_pop(&v->path, mark);
    return rc;
}

static int parse_workspace(struct v *v, const cJSON *root, struct job *job)
{
    const cJSON *w;
    if (get_object(v, root, "workspace", 0, &w) != 0)
        return -1;
    if (!w)
        return 0;
    size_t mark = jsonx_path_key(&v->path, "workspace");
    int rc = -1;
    if (check_fields(v, w, workspace_fields, NULL, NULL) == 0 &&
        get_str_list(v, w, "include", 0, 0, WORKSPACE_MAX, PATH_MAX_BYTES, STR_ABS_PATH,
                     &job->ws_include) == 0 &&
        get_str_list(v, w, "exclude", 0, 0, WORKSPACE_MAX, PATH_MAX_BYTES, STR_ANY,
                     &job->ws_exclude) == 0)
        rc = 0;
    jsonx_path_pop(&v->path, mark);
    return rc;
}

static int parse_inherit(struct v *v, const cJSON *root, struct job *job)
{
    if (get_str_list(v, root, "inherit_env", 0, 0, INHERIT_MAX, ENV_NAME_MAX, STR_ENV_NAME,
                     &job->inherit_env) != 0)
        return -1;
    size_t mark = jsonx_path_key(&v->path, "inherit_env");
    int rc = 0;
    for (size_t i = 0; rc == 0 && job->inherit_env && job->inherit_env[i]; i++) {
        const char *name = job->inherit_env[i];
        size_t m2 = jsonx_path_index(&v->path, i);
        if (!in_list(name, v->lim ? v->lim->inherit_allow : NULL))
            rc =
                fail(v, "%s is not in the operator's allow list (SANDBOX_INHERIT_ENV_ALLOW)", name);
        for (size_t j = 0; rc == 0 && j < i; j++)
            if (strcmp(job->inherit_env[j], name) == 0)
                rc = fail(v, "duplicate name %s", name);
        for (size_t j = 0; rc == 0 && j < job->nsecrets; j++)
            if (strcmp(job->secrets[j].name, name) == 0)
                rc = fail(v, "%s is also given in secrets", name);
        jsonx_path_pop(&v->path, m2);
    }
    jsonx_path_pop(&v->path, mark);
    return rc;
}

static int parse_job(struct v *v, const cJSON *root, struct job *job)
{
    int feature = 0, op = 0, after = 0;
    int64_t attempts = 0;
    if (check_fields(v, root, job_fields, NULL, NULL) != 0 ||
        get_str(v, root, "id", 1, 1, ID_MAX, STR_ID, &job->id) != 0 ||
        get_str(v, root, "thread", 1, 1, ID_MAX, STR_ID, &job->thread) != 0 ||
        get_enum(v, root, "feature", 1, feature_names, &feature) != 0 ||
        parse_tenant(v, root, job) != 0 || get_enum(v, root, "op", 0, op_names, &op) != 0)
        return -1;
    job->feature = (enum job_feature)feature;
    job->op = (enum job_op)op;
    if (parse_steps(v, root, job) != 0 || parse_workspace(v, root, job) != 0 ||
        get_enum(v, root, "after", 0, after_names, &after) != 0 ||
        get_env_map(v, root, "secrets", SECRETS_MAX, 1, &job->secrets, &job->nsecrets) != 0 ||
        parse_inherit(v, root, job) != 0 ||
        get_int(v, root, "deadline_ms", 1, v->max_deadline_ms, &job->deadline_ms) != 0 ||
        get_int(v, root, "max_attempts", 1, ATTEMPTS_MAX, &attempts) != 0)
        return -1;
    job->after = (enum job_after)after;
    job->max_attempts = (int)attempts;
    return 0;
}

static void mask_env_values(struct mask *m, const cJSON *map)
{
    if (!cJSON_IsObject(map))
        return;
    for (const cJSON *e = map->child; e; e = e->next)
        if (cJSON_IsString(e))
            mask_add(m, e->valuestring);
}

static void mask_text(const struct mask *m, char *text, size_t size)
{
    struct buf b;
    buf_init(&b);
    mask_apply(m, text, strlen(text), &b);
    snprintf(text, size, "%s", b.data ? b.data : "");
    buf_release(&b);
}

/* Defence in depth: messages only quote short enum values and key names, but should a
 * producer have put a secret (or an env value) there, it is masked like in every log. */
static void redact_error(const cJSON *root, struct job_error *err)
{
    struct mask *m = mask_new();
    mask_env_values(m, cJSON_GetObjectItemCaseSensitive(root, "secrets"));
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(root, "steps");
    if (cJSON_IsArray(steps))
        for (const cJSON *s = steps->child; s; s = s->next)
            if (cJSON_IsObject(s))
                mask_env_values(m, cJSON_GetObjectItemCaseSensitive(s, "env"));
    if (mask_count(m) > 0) {
        mask_text(m, err->field, sizeof err->field);
        mask_text(m, err->message, sizeof err->message);
    }
    mask_free(m);
}

int job_parse(const char *json, size_t len, const struct job_limits *lim, struct job **out,
              struct job_error *err)
{
    struct v v = {.lim = lim, .err = err};
    struct job *job = NULL;
    cJSON *root = NULL;
    int rc = -1;
    size_t max_bytes = lim && lim->max_job_bytes ? lim->max_job_bytes : DEFAULT_JOB_BYTES;

    *out = NULL;
    memset(err, 0, sizeof *err);
    jsonx_path_init(&v.path);
    v.max_deadline_ms = lim && lim->max_deadline_ms > 0 && lim->max_deadline_ms < JSONX_INT_MAX
                            ? lim->max_deadline_ms
                            : JSONX_INT_MAX;
    if (len > max_bytes) {
        fail(&v, "job is %zu bytes, limit is %zu", len, max_bytes);
        goto out;
    }
    size_t valid = utf8_valid_len(json, len);
    if (valid != len) {
        fail(&v, "job is not valid UTF-8 (byte %zu); send binary file content as base64", valid);
        goto out;
    }
    char why[128];
    root = jsonx_parse_strict(json, len, why, sizeof why);
    if (!root) {
        fail(&v, "job is not valid JSON: %s", why);
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        fail(&v, "job must be a JSON object, got %s", jsonx_type_name(root));
        goto out;
    }
    job = xcalloc(1, sizeof *job);
    if (parse_job(&v, root, job) != 0) {
        redact_error(root, err);
        goto out;
    }
    *out = job;
    job = NULL;
    rc = 0;
out:
    job_free(job);
    cJSON_Delete(root);
    return rc;
}

static void free_list(char **list)
{
    for (size_t i = 0; list && list[i]; i++)
        free(list[i]);
    free(list);
}

/* Frees the names and values; values may be secrets, so they are wiped first. */
static void free_env(struct job_env *env, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(env[i].name);
        if (env[i].value) {
            volatile char *p = env[i].value;
            while (*p)
                *p++ = 0;
            free(env[i].value);
        }
    }
    free(env);
}

void job_free(struct job *job)
{
    if (!job)
        return;
    for (size_t i = 0; i < job->nsteps; i++) {
        struct job_step *st = &job->steps[i];
        free(st->name);
        for (size_t j = 0; j < st->nfiles; j++) {
            free(st->files[j].path);
            free(st->files[j].data);
        }
        free(st->files);
        free(st->cmd);
        free(st->cwd);
        free_env(st->env, st->nenv);
        free(st->path);
        free_list(st->paths);
        free(st->key);
        free(st->dest);
    }
    free(job->steps);
    free(job->id);
    free(job->thread);
    free(job->organization);
    free(job->project);
    free_list(job->ws_include);
    free_list(job->ws_exclude);
    free_env(job->secrets, job->nsecrets);
    free_list(job->inherit_env);
    free(job);
}

const char *job_step_kind_name(enum step_kind k)
{
    return (unsigned)k < sizeof step_kind_names / sizeof *step_kind_names - 1 ? step_kind_names[k]
                                                                              : "unknown";
}

const char *job_feature_name(enum job_feature f)
{
    return (unsigned)f < sizeof feature_names / sizeof *feature_names - 1 ? feature_names[f]
                                                                          : "unknown";
}

/* Copies obj[key] into out when it is a unique, well-formed id; "" otherwise. */
static void peek_one(const cJSON *obj, const char *key, char *out, size_t outlen)
{
    const cJSON *item = NULL;
    int seen = 0;
    for (const cJSON *m = obj ? obj->child : NULL; m; m = m->next) {
        if (m->string && strcmp(m->string, key) == 0) {
            item = m;
            seen++;
        }
    }
    if (seen != 1 || !cJSON_IsString(item))
        return;
    const char *s = item->valuestring;
    size_t n = strlen(s);
    if (n < 1 || n > ID_MAX || n >= outlen)
        return;
    for (size_t i = 0; i < n; i++)
        if (!is_id_char((unsigned char)s[i]))
            return;
    memcpy(out, s, n + 1);
}

void job_peek_ids(const char *json, size_t len, char *id, size_t idlen, char *thread,
                  size_t threadlen)
{
    char why[128];
    if (idlen)
        id[0] = '\0';
    if (threadlen)
        thread[0] = '\0';
    cJSON *root = jsonx_parse_strict(json, len, why, sizeof why);
    if (cJSON_IsObject(root)) {
        peek_one(root, "id", id, idlen);
        peek_one(root, "thread", thread, threadlen);
    }
    cJSON_Delete(root);
}

char *job_redact_secrets(const char *json, size_t len, size_t *outlen)
{
    char why[128];
    char *text = NULL;
    cJSON *root = jsonx_parse_strict(json, len, why, sizeof why);
    cJSON *secrets =
        cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "secrets") : NULL;
    int changed = 0;
    if (secrets && cJSON_IsObject(secrets)) {
        for (cJSON *m = secrets->child; m; m = m->next) {
            if (cJSON_IsString(m) && strcmp(m->valuestring, MASK_TEXT) == 0)
                continue;
            /* Any value, string or not: it was meant as a secret. */
            cJSON *masked = cJSON_CreateString(MASK_TEXT);
            masked->string = xstrdup(m->string ? m->string : ""); /* cJSON frees it */
            cJSON_ReplaceItemViaPointer(secrets, m, masked);
            m = masked;
            changed = 1;
        }
    }
    if (changed)
        text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) {
        text = xmalloc(len + 1);
        memcpy(text, json, len);
        text[len] = '\0';
        *outlen = len;
        return text;
    }
    *outlen = strlen(text);
    return text;
}
