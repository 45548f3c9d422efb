/* lib/quote: URL percent-encoding and sh single-quoting (checked by a real sh). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/quote.h"
#include "tests/support/test.h"

TEST_CASE(url_keeps_unreserved_and_slash)
{
    struct buf b;
    buf_init(&b);
    quote_url(&b, "/a b/ü?x=1&y=~_.-");
    CHECK_STR(b.data, "/a%20b/%C3%BC%3Fx%3D1%26y%3D~_.-");
    buf_release(&b);
    buf_init(&b);
    quote_url(&b, "");
    CHECK(b.len == 0);
    buf_release(&b);
}

TEST_CASE(sh_word_survives_a_real_shell)
{
    static const char *const cases[] = {"plain",       "it's", "'", "$(echo no) `no` \"q\" \\ *",
                                        "line\nbreak", ""};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf cmd;
        buf_init(&cmd);
        buf_puts(&cmd, "printf %s ");
        quote_sh(&cmd, cases[i]);
        FILE *p = popen(cmd.data, "r");
        char out[256] = "";
        size_t n = p ? fread(out, 1, sizeof(out) - 1, p) : 0;
        out[n] = '\0';
        if (p)
            pclose(p);
        CHECK_STR(out, cases[i]);
        buf_release(&cmd);
    }
}

int main(void)
{
    RUN(url_keeps_unreserved_and_slash);
    RUN(sh_word_survives_a_real_shell);
    return test_report();
}
