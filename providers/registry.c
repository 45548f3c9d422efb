#include "providers/provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "providers/docker.h"

#define REGISTRY_MAX 16

/* Built-in backends are added here as they land. */
static const struct provider_ops *registry[REGISTRY_MAX] = {&docker_provider_ops};

void provider_register(const struct provider_ops *ops)
{
    for (int i = 0; i < REGISTRY_MAX; i++) {
        if (registry[i] == ops)
            return;
        if (!registry[i]) {
            registry[i] = ops;
            return;
        }
    }
}

const struct provider_ops *provider_find(const char *name)
{
    for (int i = 0; i < REGISTRY_MAX && registry[i]; i++)
        if (strcmp(registry[i]->name, name) == 0)
            return registry[i];
    return NULL;
}

const char *provider_names(void)
{
    static char names[256];
    size_t off = 0;
    names[0] = '\0';
    for (int i = 0; i < REGISTRY_MAX && registry[i]; i++)
        off += (size_t)snprintf(names + off, sizeof(names) - off, "%s%s", i ? ", " : "",
                                registry[i]->name);
    return off ? names : "(none)";
}

struct provider *provider_new(const struct provider_ops *ops, struct event_base *base,
                              const struct config *cfg, int check_only, char *err, size_t errlen)
{
    struct provider *p = xcalloc(1, sizeof(*p));
    p->ops = ops;
    p->base = base;
    p->cfg = cfg;
    p->priv = ops->priv_size ? xcalloc(1, ops->priv_size) : NULL;
    if (ops->init && ops->init(p, check_only, err, errlen) != 0) {
        free(p->priv);
        free(p);
        return NULL;
    }
    return p;
}

void provider_free(struct provider *p)
{
    if (!p)
        return;
    if (p->ops->cleanup)
        p->ops->cleanup(p);
    free(p->priv);
    free(p);
}

void provider_sandbox_release(struct sandbox *sb)
{
    if (sb)
        sb->prov->ops->release(sb);
}
