/* Timestamps in text. */
#ifndef SW_LIB_TIMEFMT_H
#define SW_LIB_TIMEFMT_H

#include <stdint.h>

/* RFC 3339 / ISO 8601 "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)" (a missing zone is
 * UTC) -> Unix time in ms; 0 when t is NULL, malformed or before 1970. */
int64_t timefmt_parse_ms(const char *t);

#endif
