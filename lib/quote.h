/* Quoting for the two languages the worker writes into: URLs and sh command lines. */
#ifndef SW_LIB_QUOTE_H
#define SW_LIB_QUOTE_H

#include "lib/buf.h"

/* Appends s percent-encoded for a URL path or query value: RFC 3986 unreserved characters
 * (A-Z a-z 0-9 - _ . ~) and '/' are kept, every other byte becomes %XX (upper case). */
void quote_url(struct buf *b, const char *s);
/* Appends s as one single-quoted sh word ('it'\''s'), safe whatever s holds. */
void quote_sh(struct buf *b, const char *s);

#endif
