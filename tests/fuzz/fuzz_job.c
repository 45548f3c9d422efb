/* libFuzzer target: the worker's job parser and validator (worker/job.c) and the UTF-8
 * checks it relies on (lib/utf8.c). Input: a job document, as a producer would XADD it.
 *
 * Besides memory safety (ASan/UBSan), it checks the parser's contracts:
 *  - an error always names a NUL-terminated field and message;
 *  - an accepted job has valid UTF-8, an id and a thread of the id charset, secrets of at
 *    least MASK_MIN_LEN bytes, and read caps that fit the result limit;
 *  - job_redact_secrets of an accepted job is strict JSON again and shows no secret value
 *    as the value of a "secrets" member;
 *  - utf8_valid_len agrees with a byte-at-a-time decoder.
 * Build and run: tests/fuzz/run.sh (make fuzz-worker). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "lib/jsonx.h"
#include "lib/mask.h"
#include "lib/utf8.h"
#include "worker/job.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RESULT_LIMIT (1024 * 1024)
#define READ_CAP     (256 * 1024)

/* Reference decoder for utf8_valid_len: code point ranges by sequence length. */
static size_t ref_valid_len(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i], len, cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07;
        } else {
            break;
        }
        if (i + len > n)
            break;
        size_t k;
        for (k = 1; k < len && (s[i + k] & 0xc0) == 0x80; k++)
            cp = cp << 6 | (s[i + k] & 0x3f);
        if (k < len)
            break;
        static const unsigned min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            break;
        i += len;
    }
    return i;
}

static void check_job(const struct job *j)
{
    if (!j->id || !*j->id || !j->thread || !*j->thread)
        abort();
    for (size_t i = 0; i < j->nsecrets; i++)
        if (strlen(j->secrets[i].value) < MASK_MIN_LEN)
            abort();
    size_t sum = 0;
    for (size_t i = 0; i < j->nsteps; i++)
        if (j->steps[i].kind == STEP_READ)
            sum += j->steps[i].max_bytes ? j->steps[i].max_bytes : READ_CAP;
    if (sum > RESULT_LIMIT)
        abort();
}

static void check_redacted(const char *doc, size_t len)
{
    size_t n = 0;
    char *r = job_redact_secrets(doc, len, &n);
    char why[128];
    cJSON *root = jsonx_parse_strict(r, n, why, sizeof why);
    if (!root)
        abort(); /* an accepted job is strict JSON, and so is its redacted form */
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(root, "secrets");
    for (const cJSON *m = sec ? sec->child : NULL; m; m = m->next)
        if (!cJSON_IsString(m) || strcmp(m->valuestring, MASK_TEXT) != 0)
            abort();
    cJSON_Delete(root);
    free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exactly sized copy without a terminator: reads past the end are caught. */
    char *doc = malloc(size ? size : 1);
    memcpy(doc, data, size);

    if (utf8_valid_len(doc, size) != ref_valid_len(data, size))
        abort();
    (void)utf8_lead_skip(doc, size);
    (void)utf8_json_len(doc, size);

    static const char *const allow[] = {"ANTHROPIC_API_KEY", "GIT_TOKEN", NULL};
    struct job_limits lim = {
        .max_job_bytes = 1024 * 1024,
        .max_deadline_ms = 1800000,
        .inherit_allow = allow,
        .read_cap_bytes = READ_CAP,
        .max_result_bytes = RESULT_LIMIT,
    };
    struct job *j = NULL;
    struct job_error err;
    if (job_parse(doc, size, &lim, &j, &err) == 0) {
        if (!utf8_valid(doc, size))
            abort();
        check_job(j);
        check_redacted(doc, size);
        job_free(j);
    } else {
        if (j || !memchr(err.field, '\0', sizeof err.field) ||
            !memchr(err.message, '\0', sizeof err.message) || !err.message[0])
            abort();
    }
    char id[129], thread[129];
    job_peek_ids(doc, size, id, sizeof id, thread, sizeof thread);
    size_t n = 0;
    free(job_redact_secrets(doc, size, &n));
    free(doc);
    return 0;
}
