/* Secret masking: every occurrence of a registered secret is replaced by "***".
 * Secrets shorter than MASK_MIN_LEN bytes are ignored (masking "a" would mangle all text). */
#ifndef SW_MASK_H
#define SW_MASK_H

#include <stddef.h>

#include "lib/buf.h"

#define MASK_MIN_LEN 4
#define MASK_TEXT "***"

typedef struct mask mask;

mask *mask_new(void);
void mask_free(mask *m);
/* Copies the secret. Adding one already present increments its reference count. */
void mask_add(mask *m, const char *secret);
/* Drops one reference taken by mask_add. */
void mask_remove(mask *m, const char *secret);
size_t mask_count(const mask *m);
/* Appends `in` to `out` with every secret replaced. m may be NULL (plain copy). */
void mask_apply(const mask *m, const char *in, size_t len, struct buf *out);
/* Masks a NUL-terminated string in place is impossible (it may grow): returns a malloc'd copy. */
char *mask_strdup(const mask *m, const char *s);

#endif
