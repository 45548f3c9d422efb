/* Job parsing and validation (worker/job.c) and the JSON helpers it uses (lib/jsonx.c).
 * Documents are written with ' for " to stay readable; jq() swaps them. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/jsonx.h"
#include "tests/support/test.h"
#include "worker/job.h"

#define SECRET "TOPSECRET-4242-value"
#define ENVVAL "env-value-not-to-echo"
#define MIN                                                                                        \
    "'id':'j1','thread':'t1','feature':'data-app','tenant':{'organization':'o','project':'p'}"

static const char *const allow[] = {"ANTHROPIC_API_KEY", "OTHER_KEY", NULL};
static const struct job_limits lim = {
    .max_job_bytes = 1024 * 1024, .max_deadline_ms = 1800000, .inherit_allow = allow};

static char *jq(const char *s)
{
    char *r = xstrdup(s);
    for (char *p = r; *p; p++)
        if (*p == '\'')
            *p = '"';
    return r;
}

/* Parses a '-quoted document from an exactly sized heap copy (no terminator), so reads past
 * the end are caught under ASan. */
static int parse_n(const char *doc, size_t len, struct job **out, struct job_error *err)
{
    char *copy = xmalloc(len ? len : 1);
    memcpy(copy, doc, len);
    int rc = job_parse(copy, len, &lim, out, err);
    free(copy);
    return rc;
}

static int parse(const char *sq, struct job **out, struct job_error *err)
{
    char *d = jq(sq);
    int rc = parse_n(d, strlen(d), out, err);
    free(d);
    return rc;
}

static const char full_job[] =
    "{'id':'job-123','thread':'thread-9','feature':'ai-writeback',"
    "'tenant':{'organization':'org-1','project':'Project 2'},"
    "'op':'turn',"
    "'steps':["
    "{'type':'write','name':'seed','when':'fresh','files':["
    "{'path':'/workspace/a.txt','content':'hello\\n','mode':'0600'},"
    "{'path':'/workspace/b.bin','content':'AAEA/wA=','encoding':'base64','mode':493},"
    "{'path':'/workspace/c','content':'','encoding':'utf8'}]},"
    "{'type':'run','cmd':'npm run build','cwd':'/workspace','env':{'CI':'1','NODE_OPTIONS':"
    "'--max-old-space-size=2048'},'timeout_ms':60000,'allow_failure':true,'when':'resumed'},"
    "{'type':'read','path':'/workspace/out.json','max_bytes':4096},"
    "{'type':'upload','paths':['/workspace/dist','/workspace/x'],'key':'apps/x/dist.tar.zst'},"
    "{'type':'restore','key':'apps/x/dist.tar.zst','dest':'/workspace','when':'always'},"
    "{'type':'run','cmd':'true'}"
    "],"
    "'workspace':{'include':['/workspace'],'exclude':['node_modules','.git']},"
    "'after':'destroy',"
    "'secrets':{'GITHUB_TOKEN':'ghp_secretvalue123','X_1':'abcd'},"
    "'inherit_env':['ANTHROPIC_API_KEY'],"
    "'deadline_ms':600000,"
    "'max_attempts':5}";

TEST_CASE(full_job_parses)
{
    struct job *j = NULL;
    struct job_error err;
    int rc = parse(full_job, &j, &err);
    if (rc != 0)
        test_fail(__FILE__, __LINE__, "rejected: %s: %s", err.field, err.message);
    if (!j)
        return;
    CHECK_STR(j->id, "job-123");
    CHECK_STR(j->thread, "thread-9");
    CHECK_EQ_INT(j->feature, JOB_FEATURE_AI_WRITEBACK);
    CHECK_STR(job_feature_name(j->feature), "ai-writeback");
    CHECK_STR(j->organization, "org-1");
    CHECK_STR(j->project, "Project 2");
    CHECK_EQ_INT(j->op, JOB_OP_TURN);
    CHECK_EQ_INT(j->after, JOB_AFTER_DESTROY);
    CHECK_EQ_INT(j->deadline_ms, 600000);
    CHECK_EQ_INT(j->max_attempts, 5);
    CHECK_EQ_INT(j->nsteps, 6);

    const struct job_step *s = &j->steps[0];
    CHECK_EQ_INT(s->kind, STEP_WRITE);
    CHECK_STR(job_step_kind_name(s->kind), "write");
    CHECK_STR(s->name, "seed");
    CHECK_EQ_INT(s->when, STEP_WHEN_FRESH);
    CHECK_EQ_INT(s->nfiles, 3);
    CHECK_STR(s->files[0].path, "/workspace/a.txt");
    CHECK_EQ_INT(s->files[0].len, 6);
    CHECK(memcmp(s->files[0].data, "hello\n", 6) == 0);
    CHECK_EQ_INT(s->files[0].mode, 0600);
    CHECK_EQ_INT(s->files[1].len, 5);
    CHECK(memcmp(s->files[1].data, "\0\1\0\377\0", 5) == 0);
    CHECK_EQ_INT(s->files[1].mode, 0755);
    CHECK_EQ_INT(s->files[2].len, 0);
    CHECK_EQ_INT(s->files[2].mode, 0644);

    s = &j->steps[1];
    CHECK_EQ_INT(s->kind, STEP_RUN);
    CHECK_STR(s->name, "run-1");
    CHECK_STR(s->cmd, "npm run build");
    CHECK_STR(s->cwd, "/workspace");
    CHECK_EQ_INT(s->nenv, 2);
    CHECK_STR(s->env[0].name, "CI");
    CHECK_STR(s->env[0].value, "1");
    CHECK_STR(s->env[1].name, "NODE_OPTIONS");
    CHECK_STR(s->env[1].value, "--max-old-space-size=2048");
    CHECK_EQ_INT(s->timeout_ms, 60000);
    CHECK_EQ_INT(s->allow_failure, 1);
    CHECK_EQ_INT(s->when, STEP_WHEN_RESUMED);

    s = &j->steps[2];
    CHECK_EQ_INT(s->kind, STEP_READ);
    CHECK_STR(s->name, "read-2");
    CHECK_STR(s->path, "/workspace/out.json");
    CHECK_EQ_INT(s->max_bytes, 4096);

    s = &j->steps[3];
    CHECK_EQ_INT(s->kind, STEP_UPLOAD);
    CHECK(s->paths && s->paths[0] && s->paths[1] && !s->paths[2]);
    if (s->paths && s->paths[0] && s->paths[1]) {
        CHECK_STR(s->paths[0], "/workspace/dist");
        CHECK_STR(s->paths[1], "/workspace/x");
    }
    CHECK_STR(s->key, "apps/x/dist.tar.zst");

    s = &j->steps[4];
    CHECK_EQ_INT(s->kind, STEP_RESTORE);
    CHECK_STR(s->key, "apps/x/dist.tar.zst");
    CHECK_STR(s->dest, "/workspace");
    CHECK_EQ_INT(s->when, STEP_WHEN_ALWAYS);

    s = &j->steps[5];
    CHECK_EQ_INT(s->kind, STEP_RUN);
    CHECK_STR(s->name, "run-5");
    CHECK(s->cwd == NULL);
    CHECK_EQ_INT(s->nenv, 0);
    CHECK_EQ_INT(s->timeout_ms, 0);
    CHECK_EQ_INT(s->allow_failure, 0);

    CHECK(j->ws_include && j->ws_include[0] && !j->ws_include[1]);
    CHECK_STR(j->ws_include[0], "/workspace");
    CHECK(j->ws_exclude && j->ws_exclude[0] && j->ws_exclude[1] && !j->ws_exclude[2]);
    CHECK_STR(j->ws_exclude[1], ".git");
    CHECK_EQ_INT(j->nsecrets, 2);
    CHECK_STR(j->secrets[0].name, "GITHUB_TOKEN");
    CHECK_STR(j->secrets[0].value, "ghp_secretvalue123");
    CHECK_STR(j->secrets[1].value, "abcd");
    CHECK(j->inherit_env && j->inherit_env[0] && !j->inherit_env[1]);
    CHECK_STR(j->inherit_env[0], "ANTHROPIC_API_KEY");
    job_free(j);
}

TEST_CASE(minimal_and_destroy_jobs)
{
    struct job *j = NULL;
    struct job_error err;
    CHECK_EQ_INT(parse("{" MIN "}", &j, &err), 0);
    if (j) {
        CHECK_EQ_INT(j->op, JOB_OP_TURN);
        CHECK_EQ_INT(j->after, JOB_AFTER_SUSPEND);
        CHECK_EQ_INT(j->nsteps, 0);
        CHECK(j->ws_include == NULL && j->ws_exclude == NULL && j->inherit_env == NULL);
        CHECK_EQ_INT(j->nsecrets, 0);
        CHECK_EQ_INT(j->deadline_ms, 0);
        CHECK_EQ_INT(j->max_attempts, 0);
        job_free(j);
        j = NULL;
    }
    CHECK_EQ_INT(parse(" \n{" MIN ",'op':'destroy'}\r\n\t ", &j, &err), 0);
    if (j) {
        CHECK_EQ_INT(j->op, JOB_OP_DESTROY);
        CHECK_EQ_INT(j->nsteps, 0);
        job_free(j);
        j = NULL;
    }
    CHECK_EQ_INT(parse("{" MIN ",'op':'destroy','steps':[]}", &j, &err), 0);
    job_free(j);
    j = NULL;
    /* An integral number written with a fraction or exponent is still an integer. */
    CHECK_EQ_INT(parse("{" MIN ",'max_attempts':2.0,'deadline_ms':1e3}", &j, &err), 0);
    if (j) {
        CHECK_EQ_INT(j->max_attempts, 2);
        CHECK_EQ_INT(j->deadline_ms, 1000);
        job_free(j);
        j = NULL;
    }
    /* Empty workspace lists are kept as empty (non-NULL) lists. */
    CHECK_EQ_INT(parse("{" MIN ",'workspace':{'include':[]}}", &j, &err), 0);
    if (j) {
        CHECK(j->ws_include && j->ws_include[0] == NULL && j->ws_exclude == NULL);
        job_free(j);
    }
    job_free(NULL);
}

struct bad_case {
    const char *doc;   /* ' for " ; "%S" is replaced by the appended secrets object */
    const char *field; /* expected error field */
};

/* Each body is wrapped as "{" body ",'secrets':{...SECRET...}}" unless it has its own
 * "secrets" (then the secret is in there). */
static const struct bad_case bad_cases[] = {
    {MIN ",'bogus':1", "bogus"},
    {"'thread':'t1','feature':'data-app','tenant':{'organization':'o','project':'p'}", "id"},
    {"'id':'','thread':'t1','feature':'data-app','tenant':{'organization':'o','project':'p'}",
     "id"},
    {"'id':'a/b','thread':'t1','feature':'data-app','tenant':{'organization':'o','project':'p'}",
     "id"},
    {"'id':7,'thread':'t1','feature':'data-app','tenant':{'organization':'o','project':'p'}", "id"},
    {"'id':null,'thread':'t1','feature':'data-app','tenant':{'organization':'o','project':'p'}",
     "id"},
    {"'id':'j1','id':'j2','thread':'t1','feature':'data-app','tenant':{'organization':'o','"
     "project':'p'}",
     "id"},
    {"'id':'j1','feature':'data-app','tenant':{'organization':'o','project':'p'}", "thread"},
    {"'id':'j1','thread':'t 1','feature':'data-app','tenant':{'organization':'o','project':'p'}",
     "thread"},
    {"'id':'j1','thread':'t1','tenant':{'organization':'o','project':'p'}", "feature"},
    {"'id':'j1','thread':'t1','feature':'web','tenant':{'organization':'o','project':'p'}",
     "feature"},
    {"'id':'j1','thread':'t1','feature':'data-app'", "tenant"},
    {"'id':'j1','thread':'t1','feature':'data-app','tenant':'acme'", "tenant"},
    {"'id':'j1','thread':'t1','feature':'data-app','tenant':{'organization':'o','project':'p',"
     "'extra':1}",
     "tenant.extra"},
    {"'id':'j1','thread':'t1','feature':'data-app','tenant':{'organization':'','project':'p'}",
     "tenant.organization"},
    {"'id':'j1','thread':'t1','feature':'data-app','tenant':{'organization':'o','project':'"
     "p\\u0001'}",
     "tenant.project"},
    {"'id':'j1','thread':'t1','feature':'data-app','tenant':{'organization':'o'}",
     "tenant.project"},
    {MIN ",'op':'explode'", "op"},
    {MIN ",'op':'" SECRET "'", "op"},
    {MIN ",'op':'destroy','steps':[{'type':'run','cmd':'x'}]", "steps"},
    {MIN ",'steps':{}", "steps"},
    {MIN ",'steps':[1]", "steps[0]"},
    {MIN ",'steps':[{'cmd':'x'}]", "steps[0].type"},
    {MIN ",'steps':[{'type':'exec','cmd':'x'}]", "steps[0].type"},
    {MIN ",'steps':[{'type':'run','cmd':'x','bogus':true}]", "steps[0].bogus"},
    {MIN ",'steps':[{'type':'write','cmd':'x','files':[]}]", "steps[0].cmd"},
    {MIN ",'steps':[{'type':'run','name':'a b','cmd':'x'}]", "steps[0].name"},
    {MIN ",'steps':[{'type':'run','name':'a:b','cmd':'x'}]", "steps[0].name"},
    {MIN ",'steps':[{'type':'run','name':"
         "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','cmd':'x'}]",
     "steps[0].name"},
    {MIN ",'steps':[{'type':'run','when':'sometimes','cmd':'x'}]", "steps[0].when"},
    {MIN ",'steps':[{'type':'run','cmd':'x'},{'type':'run','name':'run-0','cmd':'y'}]",
     "steps[1].name"},
    {MIN ",'steps':[{'type':'write'}]", "steps[0].files"},
    {MIN ",'steps':[{'type':'write','files':[]}]", "steps[0].files"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a','content':'','bogus':1}]}]",
     "steps[0].files[0].bogus"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a','path':'/b','content':''}]}]",
     "steps[0].files[0].path"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a','content':'" SECRET "'},"
         "{'path':'rel/a','content':''}]}]",
     "steps[0].files[1].path"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a/../etc/passwd','content':'x'}]}]",
     "steps[0].files[0].path"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a/..','content':'x'}]}]",
     "steps[0].files[0].path"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a'}]}]", "steps[0].files[0].content"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a','content':'" SECRET "',"
         "'encoding':'base64'}]}]",
     "steps[0].files[0].content"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a','content':'QQ==\\n',"
         "'encoding':'base64'}]}]",
     "steps[0].files[0].content"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a','content':'QR==',"
         "'encoding':'base64'}]}]",
     "steps[0].files[0].content"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a','content':'','encoding':'hex'}]}]",
     "steps[0].files[0].encoding"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a','content':'','mode':'0999'}]}]",
     "steps[0].files[0].mode"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a','content':'','mode':'17777'}]}]",
     "steps[0].files[0].mode"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a','content':'','mode':4096}]}]",
     "steps[0].files[0].mode"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a','content':'','mode':true}]}]",
     "steps[0].files[0].mode"},
    {MIN ",'steps':[{'type':'write','files':[{'path':'/a','content':5}]}]",
     "steps[0].files[0].content"},
    {MIN ",'steps':[{'type':'run'}]", "steps[0].cmd"},
    {MIN ",'steps':[{'type':'run','cmd':''}]", "steps[0].cmd"},
    {MIN ",'steps':[{'type':'run','cmd':'x','cmd':'y'}]", "steps[0].cmd"},
    {MIN ",'steps':[{'type':'run','cmd':'x','cwd':'workspace'}]", "steps[0].cwd"},
    {MIN ",'steps':[{'type':'run','cmd':'x','env':['A']}]", "steps[0].env"},
    {MIN ",'steps':[{'type':'run','cmd':'x','env':{'lower':'" ENVVAL "'}}]", "steps[0].env.lower"},
    {MIN ",'steps':[{'type':'run','cmd':'x','env':{'9A':'" ENVVAL "'}}]", "steps[0].env.9A"},
    {MIN ",'steps':[{'type':'run','cmd':'x','env':{'FOO':1,'BAR':'" ENVVAL "'}}]",
     "steps[0].env.FOO"},
    {MIN ",'steps':[{'type':'run','cmd':'x','env':{'FOO':'" ENVVAL "','FOO':'b'}}]",
     "steps[0].env.FOO"},
    {MIN ",'steps':[{'type':'run','cmd':'x','timeout_ms':'60000'}]", "steps[0].timeout_ms"},
    {MIN ",'steps':[{'type':'run','cmd':'x','timeout_ms':1.5}]", "steps[0].timeout_ms"},
    {MIN ",'steps':[{'type':'run','cmd':'x','timeout_ms':0}]", "steps[0].timeout_ms"},
    {MIN ",'steps':[{'type':'run','cmd':'x','timeout_ms':1800001}]", "steps[0].timeout_ms"},
    {MIN ",'steps':[{'type':'run','cmd':'x','timeout_ms':1e300}]", "steps[0].timeout_ms"},
    {MIN ",'steps':[{'type':'run','cmd':'x','allow_failure':'yes'}]", "steps[0].allow_failure"},
    {MIN ",'steps':[{'type':'run','cmd':'x','path':'/a'}]", "steps[0].path"},
    {MIN ",'steps':[{'type':'read'}]", "steps[0].path"},
    {MIN ",'steps':[{'type':'read','path':'/a','max_bytes':67108865}]", "steps[0].max_bytes"},
    {MIN ",'steps':[{'type':'read','path':'/a','max_bytes':-1}]", "steps[0].max_bytes"},
    {MIN ",'steps':[{'type':'upload','paths':[],'key':'k'}]", "steps[0].paths"},
    {MIN ",'steps':[{'type':'upload','paths':'/a','key':'k'}]", "steps[0].paths"},
    {MIN ",'steps':[{'type':'upload','paths':['/a','b'],'key':'k'}]", "steps[0].paths[1]"},
    {MIN ",'steps':[{'type':'upload','paths':['/a']}]", "steps[0].key"},
    {MIN ",'steps':[{'type':'upload','paths':['/a'],'key':'/abs'}]", "steps[0].key"},
    {MIN ",'steps':[{'type':'upload','paths':['/a'],'key':'a/../b'}]", "steps[0].key"},
    {MIN ",'steps':[{'type':'upload','paths':['/a'],'key':'a\\tb'}]", "steps[0].key"},
    {MIN ",'steps':[{'type':'restore','key':'k'}]", "steps[0].dest"},
    {MIN ",'steps':[{'type':'restore','key':'','dest':'/w'}]", "steps[0].key"},
    {MIN ",'steps':[{'type':'run','cmd':'x'},{'type':'read','path':'/a','cmd':'x'}]",
     "steps[1].cmd"},
    {MIN ",'workspace':['/w']", "workspace"},
    {MIN ",'workspace':{'bogus':[]}", "workspace.bogus"},
    {MIN ",'workspace':{'include':['']}", "workspace.include[0]"},
    {MIN ",'workspace':{'include':['w']}", "workspace.include[0]"},
    {MIN ",'workspace':{'exclude':['a',1]}", "workspace.exclude[1]"},
    {MIN ",'after':'pause'", "after"},
    {MIN ",'after':null", "after"},
    {MIN ",'secrets':['" SECRET "']", "secrets"},
    {MIN ",'secrets':{'bad-name':'" SECRET "'}", "secrets.bad-name"},
    {MIN ",'secrets':{'TOKEN':'" SECRET "','N':5}", "secrets.N"},
    {MIN ",'secrets':{'TOKEN':'" SECRET "','TOKEN':'" SECRET "'}", "secrets.TOKEN"},
    {MIN ",'inherit_env':['AWS_SECRET_ACCESS_KEY']", "inherit_env[0]"},
    {MIN ",'inherit_env':['ANTHROPIC_API_KEY','bad name']", "inherit_env[1]"},
    {MIN ",'inherit_env':['ANTHROPIC_API_KEY','ANTHROPIC_API_KEY']", "inherit_env[1]"},
    {MIN ",'inherit_env':'ANTHROPIC_API_KEY'", "inherit_env"},
    {MIN ",'secrets':{'OTHER_KEY':'" SECRET "'},'inherit_env':['OTHER_KEY']", "inherit_env[0]"},
    {MIN ",'deadline_ms':0", "deadline_ms"},
    {MIN ",'deadline_ms':1800001", "deadline_ms"},
    {MIN ",'deadline_ms':1152921504606846976", "deadline_ms"},
    {MIN ",'deadline_ms':-5", "deadline_ms"},
    {MIN ",'max_attempts':101", "max_attempts"},
    {MIN ",'max_attempts':3.5", "max_attempts"},
    {MIN ",'max_attempts':[3]", "max_attempts"},
    /* Document-level: the field is "". */
    {MIN ",'max_attempts':+3", ""},
    {MIN ",'max_attempts':03", ""},
    {MIN ",'max_attempts':3.", ""},
    {MIN ",'thread2':'a\\u0000b'", ""},
    {MIN ",'x':'a\tb'", ""},
    {MIN ",", ""},
    {MIN "} {", ""},
};

static char *wrap(const char *body)
{
    struct buf b;
    buf_init(&b);
    buf_putc(&b, '{');
    buf_puts(&b, body);
    if (!strstr(body, "'secrets'"))
        buf_puts(&b, ",'secrets':{'API_TOKEN':'" SECRET "'}");
    buf_putc(&b, '}');
    char *doc = jq(b.data);
    buf_release(&b);
    return doc;
}

TEST_CASE(invalid_documents_name_the_field)
{
    size_t n = sizeof bad_cases / sizeof *bad_cases;
    CHECK(n >= 40);
    for (size_t i = 0; i < n; i++) {
        char *doc = wrap(bad_cases[i].doc);
        struct job *j = (struct job *)1;
        struct job_error err;
        int rc = parse_n(doc, strlen(doc), &j, &err);
        if (rc != -1 || j != NULL) {
            test_fail(__FILE__, __LINE__, "case %zu accepted: %s", i, doc);
            job_free(j);
        } else {
            if (strcmp(err.field, bad_cases[i].field) != 0)
                test_fail(__FILE__, __LINE__, "case %zu: field \"%s\" (%s), want \"%s\"", i,
                          err.field, err.message, bad_cases[i].field);
            if (getenv("TEST_VERBOSE"))
                printf("  case %zu: %s: %s\n", i, err.field, err.message);
            if (err.message[0] == '\0')
                test_fail(__FILE__, __LINE__, "case %zu: empty message", i);
            if (strstr(err.message, SECRET) || strstr(err.field, SECRET) ||
                strstr(err.message, ENVVAL) || strstr(err.message, "TOPSECRET"))
                test_fail(__FILE__, __LINE__, "case %zu: error leaks a value: %s: %s", i, err.field,
                          err.message);
            if (strchr(err.message, '\n'))
                test_fail(__FILE__, __LINE__, "case %zu: multi-line message", i);
        }
        free(doc);
    }
}

TEST_CASE(message_wording)
{
    struct job *j = NULL;
    struct job_error err;
    CHECK_EQ_INT(parse("{" MIN ",'steps':[{'type':'run','cmd':'x','timeout_ms':'1'}]}", &j, &err),
                 -1);
    CHECK_STR(err.field, "steps[0].timeout_ms");
    CHECK_STR(err.message, "must be an integer, got string");
    CHECK_EQ_INT(parse("{" MIN ",'steps':[{'type':'run','cmd':'x'},{'type':'run','cmd':'x'},"
                       "{'type':'run','cmd':'x','bogus':1}]}",
                       &j, &err),
                 -1);
    CHECK_STR(err.field, "steps[2].bogus");
    CHECK_STR(err.message, "unknown field");
    CHECK_EQ_INT(parse("{" MIN ",'op':'explode'}", &j, &err), -1);
    CHECK_STR(err.message, "must be one of \"turn\", \"destroy\", got \"explode\"");
    CHECK_EQ_INT(parse("{" MIN ",'inherit_env':['AWS_KEY']}", &j, &err), -1);
    CHECK(strstr(err.message, "AWS_KEY is not in the operator's allow list") != NULL);
    CHECK_EQ_INT(parse("[1]", &j, &err), -1);
    CHECK_STR(err.field, "");
    CHECK_STR(err.message, "job must be a JSON object, got array");
    CHECK_EQ_INT(parse("", &j, &err), -1);
    CHECK_STR(err.field, "");
    CHECK_EQ_INT(parse("nope", &j, &err), -1);
    CHECK_STR(err.field, "");
    CHECK_EQ_INT(parse("'just a string'", &j, &err), -1);
    CHECK_STR(err.field, "");
    /* A secret placed where a short value is echoed is still masked. */
    CHECK_EQ_INT(parse("{" MIN ",'after':'tok-123456','secrets':{'T':'tok-123456'}}", &j, &err),
                 -1);
    CHECK_STR(err.field, "after");
    CHECK(strstr(err.message, "tok-123456") == NULL);
    CHECK(j == NULL);
}

/* Cases too large to write inline. */
TEST_CASE(generated_limits)
{
    struct buf b;
    struct job *j = NULL;
    struct job_error err;
    buf_init(&b);

    /* id of 128 is fine, 129 is not. */
    buf_printf(&b,
               "{'id':'%0128d','thread':'t','feature':'data-app',"
               "'tenant':{'organization':'o','project':'p'}}",
               0);
    CHECK_EQ_INT(parse(b.data, &j, &err), 0);
    job_free(j);
    j = NULL;
    buf_clear(&b);
    buf_printf(&b,
               "{'id':'%0129d','thread':'t','feature':'data-app',"
               "'tenant':{'organization':'o','project':'p'}}",
               0);
    CHECK_EQ_INT(parse(b.data, &j, &err), -1);
    CHECK_STR(err.field, "id");

    /* 256 steps fine, 257 not. */
    for (int n = 256; n <= 257; n++) {
        buf_clear(&b);
        buf_puts(&b, "{" MIN ",'steps':[");
        for (int i = 0; i < n; i++)
            buf_printf(&b, "%s{'type':'run','cmd':'true'}", i ? "," : "");
        buf_puts(&b, "]}");
        CHECK_EQ_INT(parse(b.data, &j, &err), n == 256 ? 0 : -1);
        if (n == 257)
            CHECK_STR(err.field, "steps");
        job_free(j);
        j = NULL;
    }

    /* 1025 files. */
    buf_clear(&b);
    buf_puts(&b, "{" MIN ",'steps':[{'type':'write','files':[");
    for (int i = 0; i < 1025; i++)
        buf_printf(&b, "%s{'path':'/f%d','content':'x'}", i ? "," : "", i);
    buf_puts(&b, "]}]}");
    CHECK_EQ_INT(parse(b.data, &j, &err), -1);
    CHECK_STR(err.field, "steps[0].files");

    /* 65 secrets; a secret value of 64 KiB + 1. */
    buf_clear(&b);
    buf_puts(&b, "{" MIN ",'secrets':{");
    for (int i = 0; i < 65; i++)
        buf_printf(&b, "%s'S%d':'" SECRET "'", i ? "," : "", i);
    buf_puts(&b, "}}");
    CHECK_EQ_INT(parse(b.data, &j, &err), -1);
    CHECK_STR(err.field, "secrets");
    CHECK(strstr(err.message, SECRET) == NULL);
    buf_clear(&b);
    buf_puts(&b, "{" MIN ",'secrets':{'BIG':'");
    for (int i = 0; i < 64 * 1024 + 1; i++)
        buf_putc(&b, 'k');
    buf_puts(&b, "'}}");
    CHECK_EQ_INT(parse(b.data, &j, &err), -1);
    CHECK_STR(err.field, "secrets.BIG");
    CHECK(strstr(err.message, "kkkk") == NULL);

    /* A path of 4097 bytes; a field path longer than the error buffer is cut, not overrun. */
    buf_clear(&b);
    buf_puts(&b, "{" MIN ",'steps':[{'type':'read','path':'/");
    for (int i = 0; i < 4096; i++)
        buf_putc(&b, 'p');
    buf_puts(&b, "'}]}");
    CHECK_EQ_INT(parse(b.data, &j, &err), -1);
    CHECK_STR(err.field, "steps[0].path");
    buf_clear(&b);
    buf_puts(&b, "{" MIN ",'steps':[{'type':'run','cmd':'x','env':{'");
    for (int i = 0; i < 300; i++)
        buf_putc(&b, 'a');
    buf_puts(&b, "':'v'}}]}");
    CHECK_EQ_INT(parse(b.data, &j, &err), -1);
    CHECK(strncmp(err.field, "steps[0].env.aaaa", 17) == 0);
    CHECK(strlen(err.field) < sizeof err.field);
    CHECK(strstr(err.field, "...") != NULL);
    buf_release(&b);
}

TEST_CASE(oversized_job)
{
    struct job_limits small = lim;
    small.max_job_bytes = 1000;
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "{\"id\":\"j\",\"pad\":\"");
    while (b.len < 998)
        buf_putc(&b, 'x');
    buf_puts(&b, "\"}");
    CHECK_EQ_INT(b.len, 1000);
    struct job *j = NULL;
    struct job_error err;
    /* Exactly at the limit: the size check passes (then "pad" is an unknown field). */
    CHECK_EQ_INT(job_parse(b.data, b.len, &small, &j, &err), -1);
    CHECK_STR(err.field, "pad");
    buf_putc(&b, ' ');
    CHECK_EQ_INT(job_parse(b.data, b.len, &small, &j, &err), -1);
    CHECK_STR(err.field, "");
    CHECK_STR(err.message, "job is 1001 bytes, limit is 1000");
    CHECK(j == NULL);
    buf_release(&b);
}

TEST_CASE(base64_binary_content)
{
    unsigned char bin[256 + 3];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (unsigned char)(i % 3 == 0 ? 0 : (i * 37) & 0xff);
    struct buf enc, doc;
    buf_init(&enc);
    buf_init(&doc);
    CHECK_EQ_INT(jsonx_base64_encode(bin, sizeof bin, &enc), 0);
    buf_printf(&doc,
               "{" MIN ",'steps':[{'type':'write','files':[{'path':'/bin','content':'%s',"
               "'encoding':'base64','mode':'755'}]}]}",
               enc.data);
    struct job *j = NULL;
    struct job_error err;
    CHECK_EQ_INT(parse(doc.data, &j, &err), 0);
    if (j) {
        CHECK_EQ_INT(j->steps[0].files[0].len, sizeof bin);
        CHECK(memcmp(j->steps[0].files[0].data, bin, sizeof bin) == 0);
        CHECK_EQ_INT(j->steps[0].files[0].mode, 0755);
        job_free(j);
    }
    buf_release(&enc);
    buf_release(&doc);
}

TEST_CASE(base64_roundtrip_and_strictness)
{
    struct buf e, d;
    buf_init(&e);
    buf_init(&d);
    unsigned char data[300];
    unsigned seed = 12345;
    for (size_t i = 0; i < sizeof data; i++) {
        seed = seed * 1103515245u + 12345u;
        data[i] = (unsigned char)(seed >> 16);
    }
    for (size_t n = 0; n <= sizeof data; n++) {
        buf_clear(&e);
        buf_clear(&d);
        jsonx_base64_encode(data, n, &e);
        if (e.len != (n + 2) / 3 * 4 || jsonx_base64_decode(e.data ? e.data : "", e.len, &d) != 0 ||
            d.len != n || (n && memcmp(d.data, data, n) != 0)) {
            test_fail(__FILE__, __LINE__, "roundtrip of %zu bytes", n);
            break;
        }
    }
    static const struct {
        const char *in, *out;
    } good[] = {{"", ""}, {"Zg==", "f"}, {"Zm8=", "fo"}, {"Zm9v", "foo"}, {"Zm9vYmFy", "foobar"}};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        buf_clear(&d);
        CHECK_EQ_INT(jsonx_base64_decode(good[i].in, strlen(good[i].in), &d), 0);
        CHECK_EQ_INT(d.len, strlen(good[i].out));
        CHECK(d.len == 0 || memcmp(d.data, good[i].out, d.len) == 0);
    }
    static const char *const bad[] = {"Zg",   "Zg=",  "Zg=a", "Z===",     "====", "Zm9v\n",
                                      "Zm 9", "Zh==", "Zm9=", "Zg==Zg==", "Zm-v", "Zm_v"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        buf_clear(&d);
        if (jsonx_base64_decode(bad[i], strlen(bad[i]), &d) != -1)
            test_fail(__FILE__, __LINE__, "accepted bad base64 \"%s\"", bad[i]);
    }
    buf_release(&e);
    buf_release(&d);
}

TEST_CASE(jsonx_helpers)
{
    char err[128];
    static const char *const good[] = {
        "0", "-0", "1.5e+3", "[1,-2.25E-2,true,false,null]", "{\"a\":\"\\\"\\\\u0000\"}", " {} "};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        cJSON *r = jsonx_parse_strict(good[i], strlen(good[i]), err, sizeof err);
        if (!r)
            test_fail(__FILE__, __LINE__, "rejected %s: %s", good[i], err);
        cJSON_Delete(r);
    }
    static const char *const bad[] = {"+1",      "01",   "1.",   ".5",           "1e",
                                      "-",       "[1,]", "{} x", "\"a\\u0000\"", "\"\x01\"",
                                      "[1]\x01", "",     "nul",  "[0x10]",       "{\"a\":1,}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cJSON *r = jsonx_parse_strict(bad[i], strlen(bad[i]), err, sizeof err);
        if (r)
            test_fail(__FILE__, __LINE__, "accepted %s", bad[i]);
        cJSON_Delete(r);
    }
    /* An embedded NUL byte within len is not the end of the document. */
    CHECK(jsonx_parse_strict("{}\0{}", 5, err, sizeof err) == NULL);

    cJSON *n = cJSON_CreateNumber(9007199254740992.0);
    int64_t v = 0;
    CHECK_EQ_INT(jsonx_int64(n, 0, INT64_MAX, &v), JSONX_INT_OK);
    CHECK_EQ_INT(v, 9007199254740992LL);
    cJSON_SetNumberValue(n, 9007199254740994.0);
    CHECK_EQ_INT(jsonx_int64(n, 0, INT64_MAX, &v), JSONX_INT_RANGE);
    cJSON_SetNumberValue(n, 2.5);
    CHECK_EQ_INT(jsonx_int64(n, 0, 10, &v), JSONX_INT_TYPE);
    cJSON_SetNumberValue(n, -3);
    CHECK_EQ_INT(jsonx_int64(n, -3, -3, &v), JSONX_INT_OK);
    CHECK_EQ_INT(v, -3);
    CHECK_EQ_INT(jsonx_int64(n, 0, 10, &v), JSONX_INT_RANGE);
    cJSON_Delete(n);
    cJSON *s = cJSON_CreateString("7");
    CHECK_EQ_INT(jsonx_int64(s, 0, 10, &v), JSONX_INT_TYPE);
    CHECK_STR(jsonx_type_name(s), "string");
    cJSON_Delete(s);

    cJSON *o = cJSON_Parse("{\"a\":1,\"b\":2,\"a\":3}");
    const cJSON *dup = jsonx_find_duplicate(o);
    CHECK(dup != NULL && dup->valueint == 3);
    cJSON_Delete(o);

    struct jsonx_path p;
    jsonx_path_init(&p);
    size_t m0 = jsonx_path_key(&p, "steps");
    size_t m1 = jsonx_path_index(&p, 12);
    jsonx_path_key(&p, "a b\n");
    CHECK_STR(p.s, "steps[12].a?b?");
    jsonx_path_pop(&p, m1);
    CHECK_STR(p.s, "steps");
    jsonx_path_pop(&p, m0);
    CHECK_STR(p.s, "");
}

/* Every proper prefix of a valid job is invalid: rejected cleanly, nothing leaked. */
TEST_CASE(truncated_prefixes_rejected)
{
    char *doc = jq(full_job);
    size_t len = strlen(doc);
    size_t accepted = 0;
    for (size_t i = 0; i < len; i++) {
        struct job *j = NULL;
        struct job_error err;
        if (parse_n(doc, i, &j, &err) != -1 || j) {
            accepted++;
            job_free(j);
        }
        char id[129], th[129];
        char *copy = xmalloc(i ? i : 1);
        memcpy(copy, doc, i);
        job_peek_ids(copy, i, id, sizeof id, th, sizeof th);
        CHECK_STR(id, "");
        free(copy);
    }
    CHECK_EQ_INT(accepted, 0);
    struct job *j = NULL;
    struct job_error err;
    CHECK_EQ_INT(parse_n(doc, len, &j, &err), 0);
    job_free(j);
    free(doc);
}

TEST_CASE(peek_ids)
{
    char id[129], th[129];
    char *d = jq("{'id':'job-1','thread':'th-1','feature':'nope','bogus':1}");
    job_peek_ids(d, strlen(d), id, sizeof id, th, sizeof th);
    CHECK_STR(id, "job-1");
    CHECK_STR(th, "th-1");
    free(d);
    d = jq("{'id':'bad id','thread':7}");
    job_peek_ids(d, strlen(d), id, sizeof id, th, sizeof th);
    CHECK_STR(id, "");
    CHECK_STR(th, "");
    free(d);
    d = jq("{'id':'a','id':'b','thread':'t'}");
    job_peek_ids(d, strlen(d), id, sizeof id, th, sizeof th);
    CHECK_STR(id, "");
    CHECK_STR(th, "t");
    free(d);
    d = jq("{'id':'a\\u0000b','thread':'t'}");
    job_peek_ids(d, strlen(d), id, sizeof id, th, sizeof th);
    CHECK_STR(id, "");
    free(d);
    job_peek_ids("not json", 8, id, sizeof id, th, sizeof th);
    CHECK_STR(id, "");
    CHECK_STR(th, "");
    char small[4];
    d = jq("{'id':'toolong','thread':'t'}");
    job_peek_ids(d, strlen(d), small, sizeof small, th, sizeof th);
    CHECK_STR(small, "");
    free(d);
}

/* A secret shorter than the mask's minimum would reach output, events and results in clear:
 * refused, naming the secret, never quoting it. "***" is a masked dead letter's value. */
TEST_CASE(short_secrets_refused)
{
    static const char *const bad[] = {
        "{" MIN ",'secrets':{'PIN':'123'}}",
        "{" MIN ",'secrets':{'OK':'" SECRET "','PIN':''}}",
        "{" MIN ",'secrets':{'PIN':'***'}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct job *j = NULL;
        struct job_error err;
        CHECK_EQ_INT(parse(bad[i], &j, &err), -1);
        CHECK_STR(err.field, "secrets.PIN");
        CHECK(strstr(err.message, "123") == NULL);
        CHECK(i != 2 || strstr(err.message, "masked"));
        CHECK(i == 2 || strstr(err.message, "at least 4 bytes"));
    }
    /* Four bytes is enough; a step's env is not a secret and may be short. */
    struct job *j = NULL;
    struct job_error err;
    CHECK_EQ_INT(parse("{" MIN ",'secrets':{'PIN':'1234'},'steps':[{'type':'run','cmd':'x',"
                       "'env':{'A':'1'}}]}",
                       &j, &err),
                 0);
    job_free(j);
}

/* The read steps' caps must fit in a result; the step where the sum goes over is named. */
TEST_CASE(read_caps_fit_the_result)
{
    struct job_limits l = lim;
    l.read_cap_bytes = 600;
    l.max_result_bytes = 1000;
    struct job *j = NULL;
    struct job_error err;
    char *d = jq("{" MIN ",'steps':[{'type':'read','path':'/a'},{'type':'run','cmd':'x'},"
                 "{'type':'read','path':'/b'}]}");
    CHECK_EQ_INT(job_parse(d, strlen(d), &l, &j, &err), -1);
    CHECK_STR(err.field, "steps[2].max_bytes");
    CHECK(strstr(err.message, "1200 bytes") && strstr(err.message, "WORKER_MAX_RESULT_BYTES") &&
          strstr(err.message, "WORKER_READ_CAP_BYTES"));
    free(d);
    d = jq("{" MIN ",'steps':[{'type':'read','path':'/a','max_bytes':400},"
           "{'type':'read','path':'/b','max_bytes':600}]}");
    CHECK_EQ_INT(job_parse(d, strlen(d), &l, &j, &err), 0);
    job_free(j);
    j = NULL;
    l.max_result_bytes = 999;
    CHECK_EQ_INT(job_parse(d, strlen(d), &l, &j, &err), -1);
    CHECK_STR(err.field, "steps[1].max_bytes");
    free(d);
}

TEST_CASE(invalid_utf8_refused)
{
    static const char *const bad[] = {
        "{\"id\":\"j\xff\"}",       /* not UTF-8 at all */
        "{\"a\":\"\xc0\xaf\"}",     /* overlong '/' */
        "{\"a\":\"\xed\xa0\x80\"}", /* a surrogate */
        "{\"a\":\"\xe2\x82\"}",     /* cut short */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct job *j = NULL;
        struct job_error err;
        CHECK_EQ_INT(parse_n(bad[i], strlen(bad[i]), &j, &err), -1);
        CHECK(strstr(err.message, "not valid UTF-8") != NULL);
    }
    struct job *j = NULL;
    struct job_error err;
    CHECK_EQ_INT(parse("{" MIN ",'steps':[{'type':'run','cmd':'echo \xc3\xa9 \xf0\x9f\x98\x80'}]}",
                       &j, &err),
                 0);
    job_free(j);
}

TEST_CASE(redact_secrets_for_dead_letters)
{
    size_t n = 0;
    char *d = jq("{" MIN ",'secrets':{'A':'" SECRET "','B':5,'C':'***'},'bogus':1}");
    char *r = job_redact_secrets(d, strlen(d), &n);
    CHECK(r && strlen(r) == n);
    CHECK(r && strstr(r, SECRET) == NULL);
    CHECK(r && strstr(r, "\"secrets\":{\"A\":\"***\",\"B\":\"***\",\"C\":\"***\"}"));
    CHECK(r && strstr(r, "\"bogus\":1"));
    free(r);
    free(d);
    /* Without secrets, or not JSON: byte for byte. */
    static const char *const same[] = {"{ \"id\" : \"x\",\n \"n\": 1e3 }", "not json {\"secrets\"",
                                       "{\"secrets\":{}}", "[1,2]"};
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        r = job_redact_secrets(same[i], strlen(same[i]), &n);
        CHECK(r && n == strlen(same[i]) && memcmp(r, same[i], n) == 0);
        free(r);
    }
}

int main(void)
{
    RUN(full_job_parses);
    RUN(minimal_and_destroy_jobs);
    RUN(invalid_documents_name_the_field);
    RUN(message_wording);
    RUN(generated_limits);
    RUN(oversized_job);
    RUN(base64_binary_content);
    RUN(base64_roundtrip_and_strictness);
    RUN(jsonx_helpers);
    RUN(truncated_prefixes_rejected);
    RUN(peek_ids);
    RUN(short_secrets_refused);
    RUN(read_caps_fit_the_result);
    RUN(invalid_utf8_refused);
    RUN(redact_secrets_for_dead_letters);
    return test_report();
}
