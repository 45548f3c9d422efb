/* Small helpers over cJSON: strict parsing, strict integers, duplicate keys, field paths for
 * error messages, and base64 (RFC 4648, standard alphabet, padded).
 *
 * cJSON is lenient where a protocol must not be: it accepts "+1", "01", raw control bytes
 * and NULs, silently truncates strings at "\u0000", and keeps duplicate keys as separate
 * items. jsonx_parse_strict and jsonx_find_duplicate close those gaps. */
#ifndef SW_LIB_JSONX_H
#define SW_LIB_JSONX_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "lib/buf.h"

/* Largest integer a JSON number (an IEEE double) carries exactly: 2^53. */
#define JSONX_INT_MAX 9007199254740992LL

/* Parses exactly len bytes (no terminator needed) as one JSON value, followed only by
 * JSON whitespace. Rejects, besides what cJSON rejects: control characters inside
 * strings, "\u0000" escapes, bytes below 0x20 other than JSON whitespace outside strings,
 * and numbers not in the JSON grammar. Returns the tree (caller frees with cJSON_Delete),
 * or NULL with a one-line reason in err that quotes no document content (only byte
 * offsets), so it is safe for documents carrying secrets. */
cJSON *jsonx_parse_strict(const char *json, size_t len, char *err, size_t errlen);

enum jsonx_int_rc {
    JSONX_INT_OK = 0,
    JSONX_INT_TYPE = -1,  /* not a number, or not integral */
    JSONX_INT_RANGE = -2, /* integral but outside [min, max] (or beyond +/-2^53) */
};
/* An integral JSON number within [min, max] into *out. */
enum jsonx_int_rc jsonx_int64(const cJSON *item, int64_t min, int64_t max, int64_t *out);

/* The first member of object obj whose key equals an earlier member's key; NULL when the
 * keys are unique (or obj is not an object). O(n^2): bound n before calling. */
const cJSON *jsonx_find_duplicate(const cJSON *obj);

/* "object", "array", "string", "number", "boolean", "null" (or "invalid"). */
const char *jsonx_type_name(const cJSON *item);

/* A field path for error messages, e.g. "steps[2].files[0].path". Keys outside
 * [A-Za-z0-9_.:-] are written with '?' for each such byte, and long paths are cut with "...",
 * so a path is always printable and fits. Embed by value; zero-initialise or jsonx_path_init. */
#define JSONX_PATH_MAX 128
struct jsonx_path {
    char s[JSONX_PATH_MAX];
    size_t len;
};
void jsonx_path_init(struct jsonx_path *p);
/* Append ".key" (just "key" at the root) or "[i]"; return a mark for jsonx_path_pop. */
size_t jsonx_path_key(struct jsonx_path *p, const char *key);
size_t jsonx_path_index(struct jsonx_path *p, size_t i);
void jsonx_path_pop(struct jsonx_path *p, size_t mark);

/* Base64, RFC 4648 standard alphabet with '=' padding. Both append to out and return 0
 * (encode cannot fail). decode is strict: length a multiple of 4, no whitespace, padding only at
 * the end, and unused bits of the last symbol zero; -1 on any violation (out is then unspecified).
 */
int jsonx_base64_encode(const void *data, size_t len, struct buf *out);
int jsonx_base64_decode(const char *text, size_t len, struct buf *out);

#endif
