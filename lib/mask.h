/* Secret masking: every occurrence of a registered secret is replaced by "***".
 * Secrets shorter than MASK_MIN_LEN bytes are ignored (masking "a" would mangle all text):
 * callers refuse them instead (worker/job.c, worker/config.c). Copies are wiped when freed. */
#ifndef SW_MASK_H
#define SW_MASK_H

#include <stddef.h>

#include "lib/buf.h"

#define MASK_MIN_LEN 4
#define MASK_TEXT    "***"

struct mask;

struct mask *mask_new(void);
void mask_free(struct mask *m);
/* Copies the secret. Adding one already present increments its reference count. */
void mask_add(struct mask *m, const char *secret);
/* Drops one reference taken by mask_add. */
void mask_remove(struct mask *m, const char *secret);
size_t mask_count(const struct mask *m);
/* Appends `in` to `out` with every secret replaced. m may be NULL (plain copy). */
void mask_apply(const struct mask *m, const char *in, size_t len, struct buf *out);
/* Streaming form: masks matches that start before `limit` (a match may extend past it) and
 * returns how many input bytes were consumed (>= limit, <= len). The caller keeps the rest
 * for the next call, so a secret split across chunks is still masked. */
size_t mask_apply_upto(const struct mask *m, const char *in, size_t len, size_t limit,
                       struct buf *out);
/* Length of the longest secret (0 when none). */
size_t mask_max_len(const struct mask *m);
/* Masks a NUL-terminated string in place is impossible (it may grow): returns a malloc'd copy. */
char *mask_strdup(const struct mask *m, const char *s);

#endif
