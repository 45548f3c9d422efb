#include "agent/agent.h"

int archive_route(struct agent *a, struct httpd_req *req)
{
    (void)a;
    (void)req;
    return -1;
}

void archive_kill_all(int sig)
{
    (void)sig;
}
