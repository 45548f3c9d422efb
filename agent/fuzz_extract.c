/* libFuzzer target: archive extraction (agent/tarball.c) with an escape oracle. Every input is
 * extracted into an empty scratch root; afterwards nothing may exist beside the root but the
 * sentinel, the sentinel must be unchanged and not hard-linked, and (unless the input asked for
 * external symlinks, bit 0 of its first byte) no symlink in the root may resolve outside it.
 * Bit 1 of the first byte makes the extractor resolve links with its component-wise walk only
 * (as on kernels without openat2).
 * The oracle resolves links with realpath(3), independently of the extractor's own checks.
 * Layout under $FUZZ_AGENT_DIR (else a fresh directory under $TMPDIR, removed at exit):
 *   box/root      the extraction root (the working directory)
 *   box/outside/victim   the sentinel
 * Run by tests/agent/fuzz.sh; seeds in tests/agent/corpus/extract. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/tarball.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define VICTIM_TEXT "sentinel\n"

static char g_box[PATH_MAX];  /* realpath of box */
static char g_root[PATH_MAX]; /* realpath of box/root */
static char g_own_dir[PATH_MAX];
static struct stat g_victim_st;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    if (ftw->level > 0)
        remove(path);
    return 0;
}

static int open_dir_mode(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)flag;
    (void)ftw;
    if (S_ISDIR(st->st_mode))
        chmod(path, 0700); /* extracted directories may be read-only */
    return 0;
}

static void remove_own_dir(void)
{
    if (!g_own_dir[0] || chdir(g_own_dir) != 0)
        return;
    nftw(".", open_dir_mode, 16, FTW_PHYS);
    nftw(".", rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (chdir("/") == 0)
        rmdir(g_own_dir);
}

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "escape oracle: %s: %s\n", what, detail);
    abort();
}

static void setup(void)
{
    const char *dir = getenv("FUZZ_AGENT_DIR");
    if (!dir || !*dir) {
        const char *tmp = getenv("TMPDIR");
        snprintf(g_own_dir, sizeof(g_own_dir), "%s/fuzz-extract-XXXXXX",
                 tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(g_own_dir))
            abort();
        atexit(remove_own_dir);
        dir = g_own_dir;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/box", dir);
    mkdir(path, 0755);
    if (!realpath(path, g_box))
        abort();
    snprintf(path, sizeof(path), "%s/root", g_box);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/outside", g_box);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/outside/victim", g_box);
    FILE *f = fopen(path, "w");
    if (!f || fputs(VICTIM_TEXT, f) < 0 || fclose(f) != 0)
        abort();
    if (stat(path, &g_victim_st) != 0)
        abort();
    snprintf(path, sizeof(path), "%s/root", g_box);
    if (!realpath(path, g_root) || chdir(g_root) != 0)
        abort();
}

static int inside_root(const char *resolved)
{
    size_t n = strlen(g_root);
    return strncmp(resolved, g_root, n) == 0 && (resolved[n] == '\0' || resolved[n] == '/');
}

/* Where a symlink at `link` (absolute) would lead: realpath of the longest existing prefix of
 * its target, the rest applied as text. Returns 1 when that is inside the root. */
static int link_inside(const char *link)
{
    char target[PATH_MAX], joined[2 * PATH_MAX + 2], base[PATH_MAX];
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n < 0)
        return 1;
    target[n] = '\0';
    if (target[0] == '/')
        return 0;
    char *slash = strrchr(link, '/');
    snprintf(joined, sizeof(joined), "%.*s/%s", (int)(slash - link), link, target);
    /* the longest prefix that resolves */
    size_t len = strlen(joined);
    char *rest = NULL;
    for (;;) {
        char save = joined[len];
        joined[len] = '\0';
        char *r = realpath(joined, base);
        joined[len] = save;
        if (r) {
            rest = joined + len;
            break;
        }
        if (errno == ELOOP)
            return 1; /* a loop leads nowhere */
        while (len > 0 && joined[len - 1] != '/')
            len--;
        if (len == 0)
            return 1;
        len--; /* drop the slash */
    }
    /* the rest, as text, from base */
    char *save = NULL;
    for (char *c = strtok_r(rest, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (strcmp(c, ".") == 0)
            continue;
        if (strcmp(c, "..") == 0) {
            char *up = strrchr(base, '/');
            if (up == base)
                base[1] = '\0';
            else if (up)
                *up = '\0';
            continue;
        }
        size_t bl = strlen(base);
        if (bl + strlen(c) + 2 > sizeof(base))
            return 1;
        snprintf(base + bl, sizeof(base) - bl, "%s%s", bl > 1 ? "/" : "", c);
    }
    return inside_root(base);
}

static int g_external_ok;

static int check_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)flag;
    (void)ftw;
    if (S_ISLNK(st->st_mode) && !g_external_ok && !link_inside(path))
        die("a symlink resolves outside the root", path);
    if (st->st_dev == g_victim_st.st_dev && st->st_ino == g_victim_st.st_ino)
        die("a hard link to the sentinel", path);
    return 0;
}

/* 1 when name is one of the space-separated words of list (" a b "). */
static int in_list(const char *name, const char *list)
{
    char word[NAME_MAX + 3];
    if (strchr(name, ' '))
        return 0;
    snprintf(word, sizeof(word), " %s ", name);
    return strstr(list, word) != NULL;
}

static void oracle(void)
{
    char path[PATH_MAX];
    /* beside the root: exactly "root" and "outside" */
    DIR *d = opendir(g_box);
    if (!d)
        abort();
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!in_list(de->d_name, " . .. root outside "))
            die("written beside the root", de->d_name);
    }
    closedir(d);
    snprintf(path, sizeof(path), "%s/outside", g_box);
    d = opendir(path);
    if (!d)
        abort();
    while ((de = readdir(d)) != NULL)
        if (!in_list(de->d_name, " . .. victim "))
            die("written into the outside directory", de->d_name);
    closedir(d);
    snprintf(path, sizeof(path), "%s/outside/victim", g_box);
    struct stat st;
    char buf[64];
    int fd = open(path, O_RDONLY | O_NOFOLLOW);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf)) : -1;
    if (fd >= 0)
        close(fd);
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 ||
        (st.st_mode & 07777) != (g_victim_st.st_mode & 07777) ||
        n != (ssize_t)strlen(VICTIM_TEXT) || memcmp(buf, VICTIM_TEXT, (size_t)n) != 0)
        die("the sentinel changed", path);
    nftw(g_root, check_entry, 16, FTW_PHYS);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 1)
        return 0;
    g_external_ok = data[0] & 1;
    struct tarball_in_opts o = {.max_bytes = 1 << 20,
                                .max_entries = 1000,
                                .max_ratio = 100,
                                .allow_external_symlinks = g_external_ok,
                                .walk_only = (data[0] >> 1) & 1};
    struct tarball_in_stats st;
    char err[256];
    if (chdir(g_root) != 0)
        abort();
    tarball_extract_mem(data + 1, size - 1, &o, &st, err, sizeof(err));
    oracle();
    /* every input starts from an empty root */
    nftw(g_root, open_dir_mode, 16, FTW_PHYS);
    nftw(g_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}
