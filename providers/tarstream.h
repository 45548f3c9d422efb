/* tar streams without files: a push parser and a filtering re-writer (ustar, pax, GNU).
 *
 * Reader (like hiredis's reader): feed any split of the bytes, get callbacks.
 *   r = tar_reader_new(&cbs, arg);
 *   tar_reader_feed(r, p, n) ... as bytes arrive (1 byte or 1 MiB at a time: same callbacks)
 *   tar_reader_finish(r);       -1 "truncated archive" when the input stopped inside an entry
 *   tar_reader_free(r);
 * Pax extended headers ('x'), GNU long names ('L') and long link names ('K') are folded into
 * the entry that follows them: on_entry sees the full name and link target. Pax global
 * headers ('g') are skipped. Memory: one header block plus the pending extended headers
 * (at most TAR_META_MAX bytes, else the feed fails).
 *
 * Writer: re-emits the entries of one or more input tar streams as one archive, each entry
 * renamed under a prefix and filtered by exclude patterns. An entry whose name or link target
 * came from extended headers, or was renamed, gets one pax header ("path", "linkpath" and its
 * other pax records) before its original ustar header; other entries pass unchanged. Output
 * goes to a sink callback as 512-byte-aligned pieces; tar_writer_finish adds the end blocks.
 *
 * Errors: functions return 0 / -1 and keep a one-line message on the object. */
#ifndef SW_PROVIDERS_TARSTREAM_H
#define SW_PROVIDERS_TARSTREAM_H

#include <stddef.h>
#include <stdint.h>

#define TAR_BLOCK    512
#define TAR_META_MAX (1u << 20) /* bytes of extended headers pending for one entry */

/* on_entry's answers. */
enum { TAR_KEEP = 0, TAR_SKIP = 1, TAR_STOP = -1 };

struct tar_entry {
    const char *name;         /* full name: pax path, GNU 'L', else ustar prefix/name */
    const char *linkname;     /* pax linkpath, GNU 'K', else the header's; "" when none */
    char type;                /* typeflag: '0' file, '1' hard link, '2' symlink, '5' dir, ... */
    uint64_t size;            /* data bytes that follow (0 for links, dirs, devices, fifos) */
    const unsigned char *hdr; /* the raw 512-byte ustar header */
    const char *pax;          /* the entry's other pax records, raw "<len> key=value\n"... */
    size_t pax_len;
    int extended; /* the name or link target came from pax or GNU headers */
};

struct tar_reader_cbs {
    /* Each entry; TAR_KEEP (its data follows through on_data), TAR_SKIP (data dropped) or
     * TAR_STOP (the feed fails). Pointers are valid during the call. */
    int (*on_entry)(void *arg, const struct tar_entry *e);
    /* Data of kept entries, without padding; n > 0. Non-zero stops the feed. May be NULL. */
    int (*on_data)(void *arg, const char *p, size_t n);
    /* The end-of-archive block was seen; the rest of the input is ignored. May be NULL. */
    void (*on_end)(void *arg);
};

typedef struct tar_reader tar_reader;

/* cbs is copied. Never NULL (aborts on allocation failure). */
tar_reader *tar_reader_new(const struct tar_reader_cbs *cbs, void *arg);
void tar_reader_free(tar_reader *r);
/* Starts over on a new archive (same callbacks). */
void tar_reader_reset(tar_reader *r);
/* 0, or -1 when a callback stopped or the input is malformed (see tar_reader_error). */
int tar_reader_feed(tar_reader *r, const void *p, size_t n);
/* The input ended: -1 when it stopped inside a header, an entry's data or its padding, or
 * after extended headers with no entry; 0 otherwise (the end blocks may be missing). */
int tar_reader_finish(tar_reader *r);
int tar_reader_at_end(const tar_reader *r); /* the end-of-archive block was seen */
const char *tar_reader_error(const tar_reader *r);
/* Sets the reader's error (for callbacks that stop with a reason); printf format. */
void tar_reader_set_error(tar_reader *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Writer. sink gets the output; non-zero from it fails the write (the sink says why through
 * tar_writer_set_error or its own state). */
typedef int (*tar_sink_fn)(void *arg, const void *p, size_t n);
typedef struct tar_writer tar_writer;

tar_writer *tar_writer_new(tar_sink_fn sink, void *arg);
void tar_writer_free(tar_writer *w);
/* Entries of the next input are named "<prefix>/<name>" ("" or NULL: unchanged). Hard-link
 * targets (archive paths) are prefixed too; symlink targets are not. Copied. */
void tar_writer_set_prefix(tar_writer *w, const char *prefix);
/* Keeps only the entries below the folder strip ("workspace" or "srv/app", no slashes at the
 * ends), named relative to it (the folder's own entry is dropped); hard-link targets are
 * renamed the same way. Applied before the prefix. Copied; NULL: keep everything. */
void tar_writer_set_strip(tar_writer *w, const char *strip);
/* Exclude patterns (see tar_excluded), NULL-terminated; borrowed until tar_writer_free. */
void tar_writer_set_exclude(tar_writer *w, const char *const *exclude);
/* Begins the next input archive (resets the parser; entries keep flowing to the sink). */
void tar_writer_next_input(tar_writer *w);
/* Bytes of the current input archive. 0 / -1. */
int tar_writer_feed(tar_writer *w, const void *p, size_t n);
/* The current input ended: -1 when it was truncated. */
int tar_writer_end_input(tar_writer *w);
/* Writes the end-of-archive blocks. 0 / -1. */
int tar_writer_finish(tar_writer *w);
uint64_t tar_writer_bytes(const tar_writer *w); /* bytes handed to the sink */
uint64_t tar_writer_entries(const tar_writer *w);
const char *tar_writer_error(const tar_writer *w);
void tar_writer_set_error(tar_writer *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Exclude matching, tar's rules: a pattern with a leading '/' is anchored at the root
 * ("/workspace/node_modules"), one without matches any run of whole components
 * ("node_modules", "*.log", "a/b"); shell wildcards, '*' does not cross '/', a leading '.'
 * must be matched explicitly. name is relative to the root ("workspace/x/y"); a trailing
 * '/' is ignored. An entry below an excluded directory is excluded too (its own name
 * contains the matching run). */
int tar_match(const char *pattern, const char *name);
int tar_excluded(const char *const *exclude, const char *name);

/* Appends one pax record "<len> key=value\n" (len counts the whole record) to out. */
struct buf;
void tar_pax_record(struct buf *out, const char *key, const char *value);

/* Numeric header field (octal, or base-256 when the high bit is set). */
uint64_t tar_num(const unsigned char *field, size_t n);

#endif
