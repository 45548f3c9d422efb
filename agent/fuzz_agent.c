/* libFuzzer target: the agent's request-head parser, the chunked body decoder, query decoding
 * and the archive extraction path (into a private scratch directory).
 * The first input byte picks the target; see tests/agent/fuzz.sh. */
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/httpd.h"
#include "agent/tarball.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t g_sink;

static void sink(void *arg, const char *d, size_t n)
{
    (void)arg;
    (void)d;
    g_sink += n;
}

static void fuzz_head(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    memcpy(buf, data, size);
    buf[size] = '\0';
    struct httpd_head h;
    if (httpd_parse_head(buf, size, &h) == 0) {
        (void)httpd_head_get(&h, "Content-Length");
        char *t = strdup(h.target);
        httpd_url_decode(t);
        free(t);
    }
    free(buf);
}

static void fuzz_chunked(const uint8_t *data, size_t size)
{
    /* feed in two pieces to exercise the resumable state machine */
    struct httpd_chunked c;
    memset(&c, 0, sizeof(c));
    size_t split = size ? data[0] % (size + 1) : 0, used = 0;
    int rc = httpd_chunked_feed(&c, (const char *)data, split, &used, sink, NULL);
    if (rc == 0 && used == split)
        httpd_chunked_feed(&c, (const char *)data + split, size - split, &used, sink, NULL);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    if (ftw->level > 0)
        remove(path);
    return 0;
}

static char g_own_dir[4096]; /* scratch directory this process created (removed at exit) */

static void remove_own_dir(void)
{
    if (!g_own_dir[0] || chdir(g_own_dir) != 0)
        return;
    nftw(".", rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (chdir("/") == 0)
        rmdir(g_own_dir);
}

/* Extraction happens in $FUZZ_AGENT_DIR (an existing directory the caller owns and removes,
 * see tests/agent/fuzz.sh), else in a fresh directory under $TMPDIR that is removed at a
 * normal exit. */
static void enter_scratch(void)
{
    const char *dir = getenv("FUZZ_AGENT_DIR");
    if (!dir || !*dir) {
        const char *tmp = getenv("TMPDIR");
        snprintf(g_own_dir, sizeof(g_own_dir), "%s/fuzz-agent-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(g_own_dir))
            abort();
        atexit(remove_own_dir);
        dir = g_own_dir;
    }
    if (chdir(dir) != 0)
        abort();
}

static void fuzz_extract(const uint8_t *data, size_t size)
{
    static int entered;
    if (!entered) {
        enter_scratch();
        entered = 1;
    }
    struct tarball_in_opts o = {
        .max_bytes = 1 << 20, .max_entries = 1000, .allow_external_symlinks = size & 1};
    struct tarball_in_stats st;
    char err[256];
    tarball_extract_mem(data, size, &o, &st, err, sizeof(err));
    /* the scratch tree is reset so every input starts from an empty directory */
    nftw(".", rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] % 3) {
    case 0:
        fuzz_head(data + 1, size - 1);
        break;
    case 1:
        fuzz_chunked(data + 1, size - 1);
        break;
    default:
        fuzz_extract(data + 1, size - 1);
        break;
    }
    return 0;
}
