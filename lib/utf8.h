/* UTF-8 checks for text that goes into JSON: results carry command output and file content,
 * which may be any bytes, while JSON text must be UTF-8.
 *
 * Valid means RFC 3629: shortest forms only, no surrogates (U+D800..U+DFFF), at most
 * U+10FFFF. NUL is valid UTF-8, but callers putting text into a C string check for it. */
#ifndef SW_LIB_UTF8_H
#define SW_LIB_UTF8_H

#include <stddef.h>

/* Length of the longest valid prefix of s[0..n) (n when all of it is valid). */
size_t utf8_valid_len(const char *s, size_t n);
/* 1 when all n bytes are valid UTF-8. */
int utf8_valid(const char *s, size_t n);
/* Continuation bytes (0x80..0xBF) at the start of s, at most 3 and at most n: what to skip
 * after cutting a text at an arbitrary byte so that it starts on a character. */
size_t utf8_lead_skip(const char *s, size_t n);
/* Bytes that cJSON's printer writes for s[0..n) as a JSON string, quotes included
 * (\" \\ \b \f \n \r \t take 2 bytes, other bytes below 0x20 take 6). */
size_t utf8_json_len(const char *s, size_t n);
/* Bytes of the padded base64 of n bytes, quotes included. */
size_t utf8_base64_json_len(size_t n);

#endif
