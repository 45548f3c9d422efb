/* Tar archives of workspace trees, out and in, with libarchive. Synchronous and
 * blocking: the agent runs these in a forked child; the fuzz target calls them in-process.
 * Memory stays bounded whatever the archive size (fixed-size copy buffers). */
#ifndef SW_AGENT_TARBALL_H
#define SW_AGENT_TARBALL_H

#include <stddef.h>
#include <stdint.h>

enum tarball_compression { TARBALL_ZSTD, TARBALL_GZIP, TARBALL_NONE };

/* Returns 0 and sets *out for "zstd", "gzip", "none" (NULL means zstd); -1 otherwise. */
int tarball_compression_parse(const char *s, enum tarball_compression *out);

/* Patterns are fnmatch(3) globs matched against the path relative to root ("src/a.c"); a
 * pattern without '/' also matches any single path component ("node_modules", "*.o").
 * An excluded directory is not descended into. With include patterns, an entry is written when
 * it or one of its parent directories matches one. */
struct tarball_out_opts {
    const char *root;         /* absolute directory the paths are relative to */
    const char *const *paths; /* relative paths to archive; none means "." */
    size_t npaths;
    const char *const *include;
    size_t ninclude;
    const char *const *exclude;
    size_t nexclude;
    enum tarball_compression compression;
    int level; /* compression level; 0 = default (zstd 3, gzip 6) */
};

/* Writes a pax tar of the selection to out_fd. Regular files, directories and symlinks are
 * stored (symlinks as links, never followed); sockets, fifos and devices are skipped.
 * 0, or -1 with err. */
int tarball_write(int out_fd, const struct tarball_out_opts *o, char *err, size_t errlen);

/* True when a relative path (as given in the request) stays inside root lexically: not
 * absolute, no ".." component. */
int tarball_relpath_ok(const char *p);

/* Expansion allowance on top of max_ratio: an archive of a few KiB may still hold this much. */
#define TARBALL_RATIO_SLACK (32ULL << 20)

struct tarball_in_opts {
    uint64_t max_bytes;   /* total file data; above it extraction stops with TARBALL_E_LIMIT */
    uint64_t max_entries; /* same for the entry count */
    uint64_t max_ratio;   /* file data may be at most max_ratio * archive bytes read +
                             TARBALL_RATIO_SLACK (TARBALL_E_LIMIT above); 0: no ratio limit */
    int allow_external_symlinks; /* 1: symlinks may point outside the tree (never written
                                    through); 0: such symlinks are refused, judged by what they
                                    resolve to on disk, also after later entries */
    int walk_only; /* resolve links with the component-wise walk even where openat2 exists (the
                      path taken on kernels without it; for tests) */
};

struct tarball_in_stats {
    uint64_t entries;
    uint64_t bytes;
};

enum { TARBALL_OK = 0, TARBALL_E_INVALID = -1, TARBALL_E_LIMIT = -2, TARBALL_E_IO = -3 };

/* Extracts a tar (any compression libarchive detects) read from fd, or from memory, into the
 * current working directory. Refuses absolute paths, ".." components, writing through
 * symlinks, links that escape the tree (resolved on disk: openat2 RESOLVE_BENEATH, else a
 * component-wise walk; links that escape only once later entries exist are removed at the
 * end), hard links to anything but a file reached through real directories,
 * devices/fifos/sockets; ignores data on hard-link entries; strips set-id bits.
 * Returns TARBALL_OK or a TARBALL_E_* code with err; entries before the failure stay. */
int tarball_extract_fd(int fd, const struct tarball_in_opts *o, struct tarball_in_stats *st,
                       char *err, size_t errlen);
int tarball_extract_mem(const void *data, size_t len, const struct tarball_in_opts *o,
                        struct tarball_in_stats *st, char *err, size_t errlen);

#endif
