// The job, result and event shapes of docs/protocol.md. Job and Result mirror
// docs/job.schema.json and docs/result.schema.json; test/schema-drift.test.mjs checks that these
// types and the schemas accept and refuse the same examples.

/** 1 to 128 characters of A-Z a-z 0-9 _ . : - */
export type Id = string;
export type Feature = "data-app" | "ai-writeback";
export type When = "always" | "fresh" | "resumed";
export type StepKind = "write" | "run" | "read" | "upload" | "restore";

export interface Tenant {
  organization: string;
  project: string;
}

export interface FileSpec {
  /** Absolute path in the sandbox. */
  path: string;
  content: string;
  encoding?: "utf8" | "base64";
  /** Octal string ("0644") or an integer 0..4095. */
  mode?: string | number;
}

interface StepBase {
  /** 1 to 64 of A-Z a-z 0-9 _ . - ; default "<type>-<index>". */
  name?: string;
  when?: When;
}

export interface WriteStep extends StepBase {
  type: "write";
  files: FileSpec[];
}

export interface RunStep extends StepBase {
  type: "run";
  /** Shell command (sh -c). */
  cmd: string;
  cwd?: string;
  env?: Record<string, string>;
  timeout_ms?: number;
  allow_failure?: boolean;
}

export interface ReadStep extends StepBase {
  type: "read";
  path: string;
  max_bytes?: number;
}

export interface UploadStep extends StepBase {
  type: "upload";
  paths: string[];
  key: string;
}

export interface RestoreStep extends StepBase {
  type: "restore";
  key: string;
  dest: string;
}

export type Step = WriteStep | RunStep | ReadStep | UploadStep | RestoreStep;

interface JobBase {
  id: Id;
  thread: Id;
  feature: Feature;
  tenant: Tenant;
  workspace?: { include?: string[]; exclude?: string[] };
  after?: "suspend" | "destroy";
  /** Injected as env into every run step and masked as *** everywhere. */
  secrets?: Record<string, string>;
  /** Names of the worker's own env variables to copy in (operator allow-list). */
  inherit_env?: string[];
  /** Whole-turn budget in ms. */
  deadline_ms?: number;
  max_attempts?: number;
}

export interface TurnJob extends JobBase {
  op?: "turn";
  steps?: Step[];
}

export interface DestroyJob extends JobBase {
  op: "destroy";
  steps?: [];
}

/** A turn job (docs/job.schema.json). */
export type Job = TurnJob | DestroyJob;

export type FinalStatus = "succeeded" | "failed" | "timeout" | "cancelled" | "rejected" | "lost";
export type StepStatus = "pending" | "ok" | "failed" | "skipped" | "timeout" | "killed" | "error";
export type EventStepStatus = "ok" | "failed" | "timeout" | "killed" | "error";

export interface StepResult {
  name: string;
  type: StepKind;
  status: StepStatus;
  exit_code?: number;
  error?: string;
  stdout?: string;
  stderr?: string;
  stdout_bytes?: number;
  stderr_bytes?: number;
  stdout_truncated?: true;
  stderr_truncated?: true;
  duration_ms: number;
}

export interface ReadFile {
  path: string;
  step: string;
  encoding: "utf8" | "base64";
  content: string;
  bytes: number;
  truncated?: true;
}

export interface Upload {
  key: string;
  bytes: number;
  sha256: string;
  step: string;
}

/** A snapshot reference: {"kind":"e2b-paused","sandboxId"}, {"kind":"s3-tar","key"}, ... */
export interface SnapshotRef {
  kind: string;
  [member: string]: unknown;
}

export interface Timings {
  queued_ms: number;
  acquire_ms?: number;
  run_ms?: number;
  suspend_ms?: number;
  total_ms: number;
}

/** The worker's result (docs/result.schema.json). Unknown members may appear: ignore them. */
export interface WorkerResult<S extends string = FinalStatus> {
  id: string;
  thread: string;
  status: S;
  attempt: number;
  worker: string;
  error?: { code: string; message: string };
  steps?: StepResult[];
  files?: ReadFile[];
  uploads?: Upload[];
  sandbox?: {
    provider: string;
    state: string;
    resumed: boolean;
    snapshot?: SnapshotRef;
  };
  timings: Timings;
}

/** The job hash is gone (its TTL passed) or the job was never enqueued with the script. */
export interface ExpiredResult {
  id: string;
  status: "expired";
}

export type Result = WorkerResult | ExpiredResult;

/** Progress events of {p}:events:<id>; `entry` is the stream entry id. */
export type JobEvent =
  | { type: "started"; entry: string; sandbox: string; resumed: boolean }
  | { type: "step_started"; entry: string; step: number; name: string; kind: StepKind }
  | {
      type: "output";
      entry: string;
      step: number;
      stream: "stdout" | "stderr";
      /** UTF-8 text; a character split across chunks is decoded whole in the later chunk. */
      data: string;
      /** The chunk's exact bytes. */
      bytes: Buffer;
    }
  | {
      type: "step_finished";
      entry: string;
      step: number;
      name: string;
      status: EventStepStatus;
      exit_code?: number;
    }
  | {
      type: "retry";
      entry: string;
      /** "<error code>: <message>" of the failed attempt. */
      reason: string;
      result: WorkerResult<"retrying">;
    }
  | { type: "done"; entry: string; status: FinalStatus; result: WorkerResult };

export interface ThreadState {
  organization?: string;
  project?: string;
  provider?: string;
  sandboxId?: string;
  /** suspended | destroyed | suspend_failed (an expired thread fails with error code "expired") */
  state?: string;
  snapshot?: SnapshotRef;
  /** Unix time in ms. */
  updatedAt?: number;
  lastJob?: string;
  /** Set while a turn of the thread runs. */
  lock?: { entry: string; job: string };
}

export interface QueueStats {
  /** Entries in {p}:jobs (acknowledged ones included until trimmed). */
  length: number;
  /** Entries not yet delivered to any worker (null when Redis cannot tell). */
  lag: number | null;
  /** Delivered, not yet acknowledged (in flight). */
  pending: number;
  consumers: number;
  /** Retries waiting in {p}:delayed, and when the next one is due (Unix ms). */
  delayed: number;
  nextDelayedAt: number | null;
  dead: number;
  results: number;
}
