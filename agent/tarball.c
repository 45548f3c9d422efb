#include "agent/tarball.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dlfcn.h>
#include <linux/openat2.h>
#include <sys/syscall.h>

#include <archive.h>
#include <archive_entry.h>

#include "lib/buf.h"

#define COPY_CHUNK (1024 * 1024)

/* libarchive is loaded on first use (dlopen), not linked: with its dependencies (ICU,
 * libstdc++, libxml2, ...) it would cost the agent milliseconds of dynamic loading before it can
 * answer /ready, and megabytes of mappings, although only the forked archive children use it.
 * Every libarchive function this file calls is listed here; the macros below route the calls
 * through the resolved pointers, so the code reads as plain libarchive. */
#define TARBALL_LA_SONAME "libarchive.so.13"
#define LA_FUNCS(X)                                                                                \
    X(archive_entry_copy_hardlink)                                                                 \
    X(archive_entry_copy_pathname)                                                                 \
    X(archive_entry_copy_stat)                                                                     \
    X(archive_entry_copy_symlink)                                                                  \
    X(archive_entry_filetype)                                                                      \
    X(archive_entry_free)                                                                          \
    X(archive_entry_hardlink)                                                                      \
    X(archive_entry_new)                                                                           \
    X(archive_entry_pathname)                                                                      \
    X(archive_entry_perm)                                                                          \
    X(archive_entry_set_gname)                                                                     \
    X(archive_entry_set_nlink)                                                                     \
    X(archive_entry_set_perm)                                                                      \
    X(archive_entry_set_size)                                                                      \
    X(archive_entry_set_uname)                                                                     \
    X(archive_entry_size)                                                                          \
    X(archive_entry_size_is_set)                                                                   \
    X(archive_entry_symlink)                                                                       \
    X(archive_error_string)                                                                        \
    X(archive_filter_bytes)                                                                        \
    X(archive_read_data_block)                                                                     \
    X(archive_read_free)                                                                           \
    X(archive_read_new)                                                                            \
    X(archive_read_next_header)                                                                    \
    X(archive_read_open_fd)                                                                        \
    X(archive_read_open_memory)                                                                    \
    X(archive_read_support_filter_all)                                                             \
    X(archive_read_support_format_tar)                                                             \
    X(archive_write_add_filter_gzip)                                                               \
    X(archive_write_add_filter_zstd)                                                               \
    X(archive_write_close)                                                                         \
    X(archive_write_data)                                                                          \
    X(archive_write_data_block)                                                                    \
    X(archive_write_disk_new)                                                                      \
    X(archive_write_disk_set_options)                                                              \
    X(archive_write_finish_entry)                                                                  \
    X(archive_write_free)                                                                          \
    X(archive_write_header)                                                                        \
    X(archive_write_new)                                                                           \
    X(archive_write_open_fd)                                                                       \
    X(archive_write_set_bytes_in_last_block)                                                       \
    X(archive_write_set_bytes_per_block)                                                           \
    X(archive_write_set_format_pax_restricted)                                                     \
    X(archive_write_set_options)

#define LA_MEMBER(fn) __typeof__(&(fn)) p_##fn;
static struct {
    int loaded;
    LA_FUNCS(LA_MEMBER)
} la;

/* 0 once every function is resolved; -1 with err otherwise. Never unloaded. */
static int la_load(char *err, size_t errlen)
{
    if (la.loaded)
        return 0;
    void *h = dlopen(TARBALL_LA_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(err, errlen, "cannot load %s: %s", TARBALL_LA_SONAME, dlerror());
        return -1;
    }
#define LA_RESOLVE(fn)                                                                             \
    {                                                                                              \
        void *sym = dlsym(h, #fn);                                                                 \
        if (!sym) {                                                                                \
            snprintf(err, errlen, "%s: %s missing", TARBALL_LA_SONAME, #fn);                       \
            return -1;                                                                             \
        }                                                                                          \
        memcpy(&la.p_##fn, &sym, sizeof(sym));                                                     \
    }
    LA_FUNCS(LA_RESOLVE)
#undef LA_RESOLVE
    la.loaded = 1;
    return 0;
}

#define archive_entry_copy_hardlink             (la.p_archive_entry_copy_hardlink)
#define archive_entry_copy_pathname             (la.p_archive_entry_copy_pathname)
#define archive_entry_copy_stat                 (la.p_archive_entry_copy_stat)
#define archive_entry_copy_symlink              (la.p_archive_entry_copy_symlink)
#define archive_entry_filetype                  (la.p_archive_entry_filetype)
#define archive_entry_free                      (la.p_archive_entry_free)
#define archive_entry_hardlink                  (la.p_archive_entry_hardlink)
#define archive_entry_new                       (la.p_archive_entry_new)
#define archive_entry_pathname                  (la.p_archive_entry_pathname)
#define archive_entry_perm                      (la.p_archive_entry_perm)
#define archive_entry_set_gname                 (la.p_archive_entry_set_gname)
#define archive_entry_set_nlink                 (la.p_archive_entry_set_nlink)
#define archive_entry_set_perm                  (la.p_archive_entry_set_perm)
#define archive_entry_set_size                  (la.p_archive_entry_set_size)
#define archive_entry_set_uname                 (la.p_archive_entry_set_uname)
#define archive_entry_size                      (la.p_archive_entry_size)
#define archive_entry_size_is_set               (la.p_archive_entry_size_is_set)
#define archive_entry_symlink                   (la.p_archive_entry_symlink)
#define archive_error_string                    (la.p_archive_error_string)
#define archive_filter_bytes                    (la.p_archive_filter_bytes)
#define archive_read_data_block                 (la.p_archive_read_data_block)
#define archive_read_free                       (la.p_archive_read_free)
#define archive_read_new                        (la.p_archive_read_new)
#define archive_read_next_header                (la.p_archive_read_next_header)
#define archive_read_open_fd                    (la.p_archive_read_open_fd)
#define archive_read_open_memory                (la.p_archive_read_open_memory)
#define archive_read_support_filter_all         (la.p_archive_read_support_filter_all)
#define archive_read_support_format_tar         (la.p_archive_read_support_format_tar)
#define archive_write_add_filter_gzip           (la.p_archive_write_add_filter_gzip)
#define archive_write_add_filter_zstd           (la.p_archive_write_add_filter_zstd)
#define archive_write_close                     (la.p_archive_write_close)
#define archive_write_data                      (la.p_archive_write_data)
#define archive_write_data_block                (la.p_archive_write_data_block)
#define archive_write_disk_new                  (la.p_archive_write_disk_new)
#define archive_write_disk_set_options          (la.p_archive_write_disk_set_options)
#define archive_write_finish_entry              (la.p_archive_write_finish_entry)
#define archive_write_free                      (la.p_archive_write_free)
#define archive_write_header                    (la.p_archive_write_header)
#define archive_write_new                       (la.p_archive_write_new)
#define archive_write_open_fd                   (la.p_archive_write_open_fd)
#define archive_write_set_bytes_in_last_block   (la.p_archive_write_set_bytes_in_last_block)
#define archive_write_set_bytes_per_block       (la.p_archive_write_set_bytes_per_block)
#define archive_write_set_format_pax_restricted (la.p_archive_write_set_format_pax_restricted)
#define archive_write_set_options               (la.p_archive_write_set_options)

int tarball_compression_parse(const char *s, enum tarball_compression *out)
{
    if (!s || !*s || strcmp(s, "zstd") == 0)
        *out = TARBALL_ZSTD;
    else if (strcmp(s, "gzip") == 0 || strcmp(s, "gz") == 0)
        *out = TARBALL_GZIP;
    else if (strcmp(s, "none") == 0)
        *out = TARBALL_NONE;
    else
        return -1;
    return 0;
}

int tarball_relpath_ok(const char *p)
{
    if (!p || !*p || *p == '/')
        return 0;
    const char *s = p;
    while (*s) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.')
            return 0;
        s += n;
        while (*s == '/')
            s++;
    }
    return 1;
}

/* ---------------------------------------------------------------- out */

struct walk {
    struct archive *a;
    const struct tarball_out_opts *o;
    char *buf;
    char *err;
    size_t errlen;
};

static int match_any(const char *const *pats, size_t n, const char *rel)
{
    const char *base = strrchr(rel, '/');
    base = base ? base + 1 : rel;
    for (size_t i = 0; i < n; i++) {
        if (fnmatch(pats[i], rel, 0) == 0)
            return 1;
        if (!strchr(pats[i], '/') && fnmatch(pats[i], base, 0) == 0)
            return 1;
    }
    return 0;
}

static int write_file_data(struct walk *w, int dfd, const char *name, const char *rel)
{
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
    if (fd < 0) {
        snprintf(w->err, w->errlen, "open %s: %s", rel, strerror(errno));
        return -1;
    }
    int rc = 0;
    for (;;) {
        ssize_t n = read(fd, w->buf, COPY_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(w->err, w->errlen, "read %s: %s", rel, strerror(errno));
            rc = -1;
            break;
        }
        if (n == 0)
            break;
        if (archive_write_data(w->a, w->buf, (size_t)n) != n) {
            snprintf(w->err, w->errlen, "archive %s: %s", rel, archive_error_string(w->a));
            rc = -1;
            break;
        }
    }
    close(fd);
    return rc;
}

/* Archives `name` (in directory dfd) as `rel`; recurses into directories. */
static int walk_one(struct walk *w, int dfd, const char *name, const char *rel, int included)
{
    const struct tarball_out_opts *o = w->o;
    if (strcmp(rel, ".") != 0 && match_any(o->exclude, o->nexclude, rel))
        return 0;
    if (!included && strcmp(rel, ".") != 0)
        included = match_any(o->include, o->ninclude, rel);
    struct stat st;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT && strcmp(rel, ".") != 0)
            return 0; /* vanished while walking */
        snprintf(w->err, w->errlen, "stat %s: %s", rel, strerror(errno));
        return -1;
    }
    int is_dir = S_ISDIR(st.st_mode);
    if (!S_ISREG(st.st_mode) && !is_dir && !S_ISLNK(st.st_mode))
        return 0;
    if (included && strcmp(rel, ".") != 0) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_copy_stat(e, &st);
        archive_entry_set_nlink(e, is_dir ? 2 : 1);
        archive_entry_set_uname(e, NULL);
        archive_entry_set_gname(e, NULL);
        if (is_dir) {
            struct buf dn;
            buf_init(&dn);
            buf_printf(&dn, "%s/", rel);
            archive_entry_copy_pathname(e, dn.data);
            buf_release(&dn);
        } else {
            archive_entry_copy_pathname(e, rel);
        }
        if (S_ISLNK(st.st_mode)) {
            char target[4096];
            ssize_t n = readlinkat(dfd, name, target, sizeof(target) - 1);
            if (n < 0) {
                archive_entry_free(e);
                snprintf(w->err, w->errlen, "readlink %s: %s", rel, strerror(errno));
                return -1;
            }
            target[n] = '\0';
            archive_entry_copy_symlink(e, target);
            archive_entry_set_size(e, 0);
        } else if (is_dir) {
            archive_entry_set_size(e, 0);
        }
        int rc = archive_write_header(w->a, e);
        archive_entry_free(e);
        if (rc < ARCHIVE_WARN) {
            snprintf(w->err, w->errlen, "archive %s: %s", rel, archive_error_string(w->a));
            return -1;
        }
        if (S_ISREG(st.st_mode) && st.st_size > 0 && write_file_data(w, dfd, name, rel) != 0)
            return -1;
    }
    if (!is_dir)
        return 0;
    int sub = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (sub < 0) {
        snprintf(w->err, w->errlen, "open %s: %s", rel, strerror(errno));
        return -1;
    }
    DIR *d = fdopendir(sub);
    if (!d) {
        close(sub);
        snprintf(w->err, w->errlen, "opendir %s: %s", rel, strerror(errno));
        return -1;
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        struct buf child;
        buf_init(&child);
        if (strcmp(rel, ".") == 0)
            buf_puts(&child, de->d_name);
        else
            buf_printf(&child, "%s/%s", rel, de->d_name);
        rc = walk_one(w, dirfd(d), de->d_name, child.data, included);
        buf_release(&child);
    }
    closedir(d);
    return rc;
}

int tarball_write(int out_fd, const struct tarball_out_opts *o, char *err, size_t errlen)
{
    int rc = -1;
    struct walk w = {.o = o, .err = err, .errlen = errlen};
    if (la_load(err, errlen) != 0)
        return -1;
    int root = open(o->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) {
        snprintf(err, errlen, "open %s: %s", o->root, strerror(errno));
        return -1;
    }
    w.buf = xmalloc(COPY_CHUNK);
    w.a = archive_write_new();
    archive_write_set_format_pax_restricted(w.a);
    char opt[64];
    if (o->compression == TARBALL_ZSTD) {
        archive_write_add_filter_zstd(w.a);
        snprintf(opt, sizeof(opt), "zstd:compression-level=%d", o->level ? o->level : 3);
        archive_write_set_options(w.a, opt);
    } else if (o->compression == TARBALL_GZIP) {
        archive_write_add_filter_gzip(w.a);
        snprintf(opt, sizeof(opt), "gzip:compression-level=%d", o->level ? o->level : 6);
        archive_write_set_options(w.a, opt);
    }
    archive_write_set_bytes_per_block(w.a, 64 * 1024);
    archive_write_set_bytes_in_last_block(w.a, 1);
    if (archive_write_open_fd(w.a, out_fd) != ARCHIVE_OK) {
        snprintf(err, errlen, "archive: %s", archive_error_string(w.a));
        goto out;
    }
    static const char *const dot[] = {"."};
    const char *const *paths = o->npaths ? o->paths : dot;
    size_t npaths = o->npaths ? o->npaths : 1;
    int all = o->ninclude == 0;
    for (size_t i = 0; i < npaths; i++) {
        if (!tarball_relpath_ok(paths[i])) {
            snprintf(err, errlen, "path \"%s\" must be relative without \"..\"", paths[i]);
            goto out;
        }
        /* a named path is archived under its own relative name */
        char *p = xstrdup(paths[i]);
        size_t n = strlen(p);
        while (n > 1 && p[n - 1] == '/')
            p[--n] = '\0';
        const char *rel = strncmp(p, "./", 2) == 0 && p[2] ? p + 2 : p;
        int r = walk_one(&w, root, rel, rel, all);
        free(p);
        if (r != 0)
            goto out;
    }
    if (archive_write_close(w.a) != ARCHIVE_OK) {
        snprintf(err, errlen, "archive: %s", archive_error_string(w.a));
        goto out;
    }
    rc = 0;
out:
    archive_write_free(w.a);
    free(w.buf);
    close(root);
    return rc;
}

/* ---------------------------------------------------------------- in */

/* Lexical check that `target`, taken relative to the directory of `entry`, stays inside. */
static int link_escapes(const char *entry, const char *target)
{
    if (target[0] == '/')
        return 1;
    int depth = 0;
    /* directory part of the entry */
    const char *s = entry;
    const char *last = strrchr(entry, '/');
    while (last && s < last) {
        const char *e = strchr(s, '/');
        size_t n = (size_t)(e - s);
        if (n == 0 || (n == 1 && s[0] == '.')) {
        } else if (n == 2 && s[0] == '.' && s[1] == '.') {
            depth--;
        } else {
            depth++;
        }
        s = e + 1;
    }
    s = target;
    while (*s) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.') {
            if (--depth < 0)
                return 1;
        } else if (n && !(n == 1 && s[0] == '.')) {
            depth++;
        }
        s += n;
        while (*s == '/')
            s++;
    }
    return 0;
}

/* Resolution on disk. A symlink's meaning depends on what the tree holds when it is followed
 * ("a -> ." turns "a/a/a/../.." into "../.."), so text checks alone cannot tell where it points.
 * Paths below are relative to the extraction root, opened as rootfd. */

#define MAX_LINK_HOPS 40 /* the kernel's own limit */

/* Walks `path` component by component as the kernel would, following the symlinks it finds on
 * disk (the last component only with follow_last). Returns 1 when the walk leaves the tree (a
 * ".." above the root, or an absolute link), 0 otherwise. From a missing component on, the
 * rest is taken as text: a later mkdir must not turn "missing/../.." into an escape. */
static int walk_escapes(int rootfd, const char *path, int follow_last)
{
    struct buf cur, pending;
    buf_init(&cur);
    buf_init(&pending);
    buf_puts(&pending, path);
    int depth = 0, hops = 0, missing = 0, escapes = 0;
    while (pending.len) {
        char *p = pending.data;
        char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        char name[NAME_MAX + 1];
        int last = !slash;
        if (n > NAME_MAX)
            break; /* ENAMETOOLONG: nothing can be reached */
        memcpy(name, p, n);
        name[n] = '\0';
        size_t consumed = slash ? n + 1 : n;
        memmove(pending.data, pending.data + consumed, pending.len - consumed + 1);
        pending.len -= consumed;
        if (!n || strcmp(name, ".") == 0)
            continue;
        if (strcmp(name, "..") == 0) {
            if (depth == 0) {
                escapes = 1;
                break;
            }
            char *up = strrchr(cur.data, '/');
            cur.len = up ? (size_t)(up - cur.data) : 0;
            cur.data[cur.len] = '\0';
            depth--;
            continue;
        }
        size_t mark = cur.len;
        buf_printf(&cur, "%s%s", mark ? "/" : "", name);
        struct stat st;
        if (!missing && fstatat(rootfd, cur.data, &st, AT_SYMLINK_NOFOLLOW) != 0)
            missing = 1;
        if (!missing && S_ISLNK(st.st_mode) && (!last || follow_last)) {
            char target[PATH_MAX];
            ssize_t k = readlinkat(rootfd, cur.data, target, sizeof(target) - 1);
            cur.len = mark;
            cur.data[mark] = '\0';
            if (k <= 0 || ++hops > MAX_LINK_HOPS)
                break; /* unreadable or a loop: the kernel would stop here too */
            target[k] = '\0';
            if (target[0] == '/') {
                escapes = 1;
                break;
            }
            struct buf next;
            buf_init(&next);
            buf_printf(&next, "%s%s%s", target, pending.len ? "/" : "",
                       pending.len ? pending.data : "");
            buf_release(&pending);
            pending = next;
            continue;
        }
        depth++;
    }
    buf_release(&cur);
    buf_release(&pending);
    return escapes;
}

/* 1 when resolving `path` under rootfd leaves the tree, 0 when it stays inside or ends at a
 * missing component (then the rest is checked as text). openat2(RESOLVE_BENEATH) where the
 * kernel has it (Linux 5.6+), else the walk above. */
static int resolves_outside(int rootfd, const char *path, int follow_last, int walk_only)
{
#ifdef SYS_openat2
    if (walk_only)
        return walk_escapes(rootfd, path, follow_last);
    struct open_how how;
    memset(&how, 0, sizeof(how));
    how.flags = O_PATH | O_CLOEXEC | (follow_last ? 0 : O_NOFOLLOW);
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    for (int attempt = 0; attempt < 3; attempt++) {
        long fd = syscall(SYS_openat2, rootfd, path, &how, sizeof(how));
        if (fd >= 0) {
            close((int)fd);
            return 0;
        }
        if (errno == EXDEV)
            return 1;
        if (errno != EAGAIN) /* ENOSYS, EPERM (seccomp), ENOENT, ELOOP, ...: walk */
            break;
    }
#endif
    return walk_escapes(rootfd, path, follow_last);
}

/* "dir/of/entry" + "/" + target: where a symlink at `entry` points, relative to the root. */
static char *link_target_path(const char *entry, const char *target)
{
    struct buf b;
    buf_init(&b);
    const char *slash = strrchr(entry, '/');
    if (slash)
        buf_printf(&b, "%.*s/", (int)(slash - entry), entry);
    buf_puts(&b, target);
    return buf_detach(&b);
}

/* A hard link's target must be an existing non-directory inside the tree, reached through real
 * directories only (a symlink on the way could lead anywhere). */
static int hardlink_target_ok(int rootfd, const char *target)
{
    struct buf prefix;
    buf_init(&prefix);
    int ok = 1;
    const char *s = target;
    while (ok && *s) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 0 || (n == 1 && s[0] == '.')) {
            s += n + (e ? 1 : 0);
            continue;
        }
        buf_printf(&prefix, "%s%.*s", prefix.len ? "/" : "", (int)n, s);
        struct stat st;
        /* missing, a symlink (or file) in the middle, or a directory at the end */
        ok = fstatat(rootfd, prefix.data, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
             (e ? S_ISDIR(st.st_mode) : !S_ISDIR(st.st_mode));
        s += n + (e ? 1 : 0);
    }
    if (!prefix.len)
        ok = 0;
    buf_release(&prefix);
    return ok;
}

/* Paths of the links this extraction made (symlinks, and hard links, which may be symlinks
 * too), checked again once the whole tree is there. */
struct link_list {
    char **v;
    size_t n, cap;
};

static void link_list_add(struct link_list *l, const char *path)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = xrealloc(l->v, l->cap * sizeof(*l->v));
    }
    l->v[l->n++] = xstrdup(path);
}

static void link_list_release(struct link_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

/* Links made early can point outside once later entries exist ("v -> b/c/../.." before
 * "b -> ."): every recorded link that is a symlink and now resolves outside is removed.
 * Returns the number removed; the first one's path goes to err. */
static size_t recheck_links(int rootfd, const struct link_list *l, int walk_only, char *err,
                            size_t errlen)
{
    size_t removed = 0;
    for (size_t i = 0; i < l->n; i++) {
        const char *path = l->v[i];
        struct stat st;
        /* the parents are real directories (libarchive refuses to write through a symlink) */
        if (resolves_outside(rootfd, path, 0, walk_only) ||
            fstatat(rootfd, path, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISLNK(st.st_mode))
            continue;
        if (!resolves_outside(rootfd, path, 1, walk_only))
            continue;
        unlinkat(rootfd, path, 0);
        if (!removed++)
            snprintf(err, errlen, "refused symlink \"%s\": resolves outside the tree", path);
    }
    return removed;
}

static int extract(struct archive *in, const struct tarball_in_opts *o, struct tarball_in_stats *st,
                   char *err, size_t errlen)
{
    int rc = TARBALL_OK;
    memset(st, 0, sizeof(*st));
    struct link_list links = {0};
    char *partial = NULL; /* the file whose data is being written; removed if that fails */
    int rootfd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) {
        snprintf(err, errlen, "open the target: %s", strerror(errno));
        return TARBALL_E_IO;
    }
    struct archive *out = archive_write_disk_new();
    archive_write_disk_set_options(
        out, ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                 ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS | ARCHIVE_EXTRACT_PERM |
                 ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_UNLINK);
    for (;;) {
        struct archive_entry *e;
        int r = archive_read_next_header(in, &e);
        if (r == ARCHIVE_EOF)
            break;
        if (r < ARCHIVE_WARN) {
            snprintf(err, errlen, "bad archive: %s", archive_error_string(in));
            rc = TARBALL_E_INVALID;
            goto out;
        }
        const char *path = archive_entry_pathname(e);
        if (!path || !*path) {
            snprintf(err, errlen, "entry without a name");
            rc = TARBALL_E_INVALID;
            goto out;
        }
        while (path[0] == '.' && path[1] == '/')
            path += 2;
        if (!*path || strcmp(path, ".") == 0)
            continue; /* the root itself */
        if (!tarball_relpath_ok(path)) {
            snprintf(err, errlen, "refused entry \"%s\": absolute or contains \"..\"", path);
            rc = TARBALL_E_INVALID;
            goto out;
        }
        char *clean = xstrdup(path);
        archive_entry_copy_pathname(e, clean);
        free(clean);
        path = archive_entry_pathname(e);
        const char *hl = archive_entry_hardlink(e);
        mode_t type = archive_entry_filetype(e);
        if (hl) {
            while (hl[0] == '.' && hl[1] == '/')
                hl += 2;
            if (!tarball_relpath_ok(hl)) {
                snprintf(err, errlen, "refused hardlink \"%s\": target escapes the tree", path);
                rc = TARBALL_E_INVALID;
                goto out;
            }
            char *h = xstrdup(hl);
            archive_entry_copy_hardlink(e, h);
            free(h);
            hl = archive_entry_hardlink(e);
            if (!hardlink_target_ok(rootfd, hl)) {
                snprintf(err, errlen,
                         "refused hardlink \"%s\": target \"%s\" is not a file reached "
                         "through directories of the tree",
                         path, hl);
                rc = TARBALL_E_INVALID;
                goto out;
            }
            /* data on a link entry would be written through the link: the target's content
             * is the target's own (libarchive would truncate it to the entry's size) */
            archive_entry_set_size(e, 0);
        } else if (type == AE_IFLNK) {
            const char *t = archive_entry_symlink(e);
            if (!t || !*t || (!o->allow_external_symlinks && link_escapes(path, t))) {
                snprintf(err, errlen, "refused symlink \"%s\": target escapes the tree", path);
                rc = TARBALL_E_INVALID;
                goto out;
            }
            if (!o->allow_external_symlinks) {
                /* the text is fine; what is on disk decides ("a -> ." makes "a/a/.." mean "..") */
                char *tp = link_target_path(path, t);
                int outside = resolves_outside(rootfd, tp, 1, o->walk_only);
                free(tp);
                if (outside) {
                    snprintf(err, errlen, "refused symlink \"%s\": resolves outside the tree",
                             path);
                    rc = TARBALL_E_INVALID;
                    goto out;
                }
            }
        } else if (type != AE_IFREG && type != AE_IFDIR) {
            snprintf(err, errlen, "refused entry \"%s\": not a file, directory or link", path);
            rc = TARBALL_E_INVALID;
            goto out;
        }
        archive_entry_set_perm(e, archive_entry_perm(e) & 01777);
        if (++st->entries > o->max_entries) {
            snprintf(err, errlen, "archive has more than %llu entries",
                     (unsigned long long)o->max_entries);
            rc = TARBALL_E_LIMIT;
            goto out;
        }
        if (type == AE_IFREG && archive_entry_size_is_set(e) &&
            (uint64_t)archive_entry_size(e) > o->max_bytes - st->bytes) {
            snprintf(err, errlen, "archive content exceeds %llu bytes",
                     (unsigned long long)o->max_bytes);
            rc = TARBALL_E_LIMIT;
            goto out;
        }
        r = archive_write_header(out, e);
        if (r < ARCHIVE_WARN) {
            snprintf(err, errlen, "refused entry \"%s\": %s", path, archive_error_string(out));
            rc = TARBALL_E_INVALID;
            goto out;
        }
        if ((hl || type == AE_IFLNK) && !o->allow_external_symlinks)
            link_list_add(&links, path);
        if (hl || type != AE_IFREG) {
            if (archive_write_finish_entry(out) < ARCHIVE_WARN) {
                snprintf(err, errlen, "write %s: %s", path, archive_error_string(out));
                rc = TARBALL_E_IO;
                goto out;
            }
            continue;
        }
        partial = xstrdup(path);
        for (;;) {
            const void *buf;
            size_t n;
            la_int64_t off;
            r = archive_read_data_block(in, &buf, &n, &off);
            if (r == ARCHIVE_EOF)
                break;
            if (r < ARCHIVE_WARN) {
                snprintf(err, errlen, "bad archive: %s", archive_error_string(in));
                rc = TARBALL_E_INVALID;
                goto out;
            }
            if (n > o->max_bytes - st->bytes) {
                snprintf(err, errlen, "archive content exceeds %llu bytes",
                         (unsigned long long)o->max_bytes);
                rc = TARBALL_E_LIMIT;
                goto out;
            }
            if (o->max_ratio) {
                /* bytes out per archive byte in: a small bomb stops early, whatever max_bytes */
                uint64_t in_bytes = (uint64_t)archive_filter_bytes(in, -1);
                uint64_t allowed = in_bytes > (UINT64_MAX - TARBALL_RATIO_SLACK) / o->max_ratio
                                       ? UINT64_MAX
                                       : in_bytes * o->max_ratio + TARBALL_RATIO_SLACK;
                if (n > allowed || st->bytes > allowed - n) {
                    snprintf(err, errlen,
                             "archive expands more than %llu times its size (%llu bytes read)",
                             (unsigned long long)o->max_ratio, (unsigned long long)in_bytes);
                    rc = TARBALL_E_LIMIT;
                    goto out;
                }
            }
            st->bytes += n;
            if (archive_write_data_block(out, buf, n, off) < ARCHIVE_WARN) {
                snprintf(err, errlen, "write %s: %s", path, archive_error_string(out));
                rc = TARBALL_E_IO;
                goto out;
            }
        }
        if (archive_write_finish_entry(out) < ARCHIVE_WARN) {
            snprintf(err, errlen, "write %s: %s", path, archive_error_string(out));
            rc = TARBALL_E_IO;
            goto out;
        }
        free(partial);
        partial = NULL;
    }
    if (archive_write_close(out) != ARCHIVE_OK) {
        snprintf(err, errlen, "finish: %s", archive_error_string(out));
        rc = TARBALL_E_IO;
    }
out:
    if (links.n) {
        char lerr[512];
        if (recheck_links(rootfd, &links, o->walk_only, lerr, sizeof(lerr)) && rc == TARBALL_OK) {
            snprintf(err, errlen, "%s", lerr);
            rc = TARBALL_E_INVALID;
        }
    }
    archive_write_free(out);
    if (partial) /* a cut-short file must not pass for a whole one (libarchive sizes it) */
        unlinkat(rootfd, partial, 0);
    free(partial);
    link_list_release(&links);
    close(rootfd);
    return rc;
}

static struct archive *reader_new(void)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    return a;
}

/* Extracts from a reader whose open returned open_rc, then frees it. */
static int extract_opened(struct archive *a, int open_rc, const struct tarball_in_opts *o,
                          struct tarball_in_stats *st, char *err, size_t errlen)
{
    int rc;
    if (open_rc != ARCHIVE_OK) {
        snprintf(err, errlen, "bad archive: %s", archive_error_string(a));
        memset(st, 0, sizeof(*st));
        rc = TARBALL_E_INVALID;
    } else {
        rc = extract(a, o, st, err, errlen);
    }
    archive_read_free(a);
    return rc;
}

int tarball_extract_fd(int fd, const struct tarball_in_opts *o, struct tarball_in_stats *st,
                       char *err, size_t errlen)
{
    if (la_load(err, errlen) != 0) {
        memset(st, 0, sizeof(*st));
        return TARBALL_E_IO;
    }
    struct archive *a = reader_new();
    return extract_opened(a, archive_read_open_fd(a, fd, COPY_CHUNK), o, st, err, errlen);
}

int tarball_extract_mem(const void *data, size_t len, const struct tarball_in_opts *o,
                        struct tarball_in_stats *st, char *err, size_t errlen)
{
    if (la_load(err, errlen) != 0) {
        memset(st, 0, sizeof(*st));
        return TARBALL_E_IO;
    }
    struct archive *a = reader_new();
    return extract_opened(a, archive_read_open_memory(a, data, len), o, st, err, errlen);
}
