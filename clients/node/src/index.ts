export {
  JobHandle,
  JobValidationError,
  SandboxQueue,
  TimeoutError,
  type EventsOptions,
  type ResultOptions,
  type SandboxQueueOptions,
} from "./queue.js";
export { validateSchema, type JsonSchema, type SchemaError } from "./schema.js";
export { JOB_SCHEMA, RESULT_SCHEMA } from "./generated/schemas.js";
export { GROUP, KEY_PATTERNS, SCRIPTS, type LuaScript } from "./generated/protocol.js";
export type * from "./types.js";
