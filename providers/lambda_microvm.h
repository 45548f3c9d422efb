/* The lambda-microvm backend: each sandbox is an AWS Lambda MicroVM (API 2025-09-09, SigV4
 * service "lambda") in the operator's account, reached through its endpoint where the exec
 * agent listens; suspend is native (SuspendMicrovm), resume is ResumeMicrovm. Configuration:
 * docs/configuration.md ("lambda-microvm"). */
#ifndef SW_PROVIDERS_LAMBDA_MICROVM_H
#define SW_PROVIDERS_LAMBDA_MICROVM_H

#include "providers/provider.h"

extern const struct provider_ops lambda_microvm_provider_ops;

#endif
