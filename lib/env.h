/* Environment variables, read the same way everywhere (worker config, providers, the agent).
 *
 * A variable set to "" counts as unset. Error messages are one line naming the variable and
 * what is wrong, with the bad value quoted (escaped, cut at ENV_QUOTE_MAX bytes), e.g.
 * "WORKER_CONCURRENCY: must be an integer between 1 and 4096, got \"abc\"". Callers must not
 * pass secret values to env_quote. */
#ifndef SW_LIB_ENV_H
#define SW_LIB_ENV_H

#include <stddef.h>
#include <stdint.h>

#define ENV_QUOTE_MAX 64                      /* bytes of a bad value shown in a message */
#define ENV_QUOTE_LEN (ENV_QUOTE_MAX * 4 + 8) /* buffer size for env_quote */

/* Absent or empty → def (may be NULL). Returned pointer is getenv's or def. */
const char *env_str(const char *name, const char *def);
/* Absent or empty → def; not a strict decimal integer in [min,max] → -1 with err. */
int env_int64(const char *name, int64_t def, int64_t min, int64_t max, int64_t *out, char *err,
              size_t errlen);
/* true/false/1/0/yes/no, case-insensitive; absent or empty → def; else -1 with err. */
int env_bool(const char *name, int def, int *out, char *err, size_t errlen);

/* Parsers behind the above: 0 or -1. */
int env_parse_i64(const char *s, int64_t *out);
int env_parse_bool(const char *s, int *out);

/* `"value"` for a message into out (ENV_QUOTE_LEN bytes): \" \\ \xNN escaped, cut with "...". */
void env_quote(const char *s, char *out, size_t outlen);
/* snprintf into err (may be NULL) with newlines replaced: messages are one line. */
void env_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Password of a URL's userinfo "scheme://[user[:password]@]rest" as [*pw, *pwend) (the whole
 * userinfo when it has no ':'); 0 when there is none. The userinfo ends at the last '@'. */
int env_url_password_span(const char *url, const char **pw, const char **pwend);
/* A copy of url (malloc'd, caller frees) with that password replaced by "***"
 * ("redis://user:***@host:6379/0"). url may be NULL (returns ""). */
char *env_url_redact(const char *url);

#endif
