// A small JSON Schema (draft 2020-12) validator for the keywords the repository's schemas use
// (docs/job.schema.json, docs/result.schema.json): type, enum, const, properties, required,
// additionalProperties, propertyNames, maxProperties, items, minItems, maxItems, uniqueItems,
// minLength, maxLength, pattern, minimum, maximum, local $ref, allOf, anyOf, oneOf, not,
// if/then/else. Annotations (title, description, default, ...) are ignored. A keyword it does
// not know makes validation throw, so a schema change cannot be silently half-checked.

export type JsonSchema = boolean | { readonly [keyword: string]: unknown };

/** One failed check: `path` in the document's own notation (`steps[2].timeout_ms`). */
export interface SchemaError {
  path: string;
  message: string;
}

const ANNOTATIONS = new Set([
  "$schema",
  "$id",
  "$defs",
  "title",
  "description",
  "default",
  "examples",
]);

type Obj = { readonly [k: string]: unknown };

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function typeOk(t: string, v: unknown): boolean {
  switch (t) {
    case "object":
      return isObj(v);
    case "array":
      return Array.isArray(v);
    case "string":
      return typeof v === "string";
    case "integer":
      return typeof v === "number" && Number.isInteger(v);
    case "number":
      return typeof v === "number" && Number.isFinite(v);
    case "boolean":
      return typeof v === "boolean";
    case "null":
      return v === null;
    default:
      throw new Error(`schema: unknown type "${t}"`);
  }
}

function equal(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b))
    return a.length === b.length && a.every((x, i) => equal(x, b[i]));
  if (isObj(a) && isObj(b)) {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => k in b && equal(a[k], b[k]));
  }
  return false;
}

function child(path: string, key: string | number): string {
  if (typeof key === "number") return `${path}[${key}]`;
  return path ? `${path}.${key}` : key;
}

const patterns = new Map<string, RegExp>();
function regex(p: string): RegExp {
  let r = patterns.get(p);
  if (!r) {
    r = new RegExp(p, "u");
    patterns.set(p, r);
  }
  return r;
}

class Validator {
  constructor(private readonly root: JsonSchema) {}

  private resolve(ref: string): JsonSchema {
    if (!ref.startsWith("#/")) throw new Error(`schema: unsupported $ref "${ref}"`);
    let node: unknown = this.root;
    for (const part of ref.slice(2).split("/")) {
      if (!isObj(node)) throw new Error(`schema: bad $ref "${ref}"`);
      node = node[part.replace(/~1/g, "/").replace(/~0/g, "~")];
    }
    if (node === undefined) throw new Error(`schema: bad $ref "${ref}"`);
    return node as JsonSchema;
  }

  check(s: JsonSchema, v: unknown, path: string, errs: SchemaError[]): void {
    if (s === true) return;
    if (s === false) {
      errs.push({ path, message: "is not allowed" });
      return;
    }
    const n = errs.length;
    const fail = (message: string, at = path) => errs.push({ path: at, message });
    for (const [kw, arg] of Object.entries(s)) {
      if (ANNOTATIONS.has(kw)) continue;
      const a = arg as never;
      switch (kw) {
        case "$ref":
          this.check(this.resolve(a), v, path, errs);
          break;
        case "type": {
          const ts: string[] = Array.isArray(arg) ? (arg as string[]) : [a];
          if (!ts.some((t) => typeOk(t, v))) fail(`must be of type ${ts.join(" or ")}`);
          break;
        }
        case "enum":
          if (!(arg as unknown[]).some((e) => equal(e, v)))
            fail(`must be one of ${(arg as unknown[]).map((e) => JSON.stringify(e)).join(", ")}`);
          break;
        case "const":
          if (!equal(arg, v)) fail(`must be ${JSON.stringify(arg)}`);
          break;
        case "properties":
          if (isObj(v))
            for (const [k, sub] of Object.entries(arg as Obj))
              if (k in v) this.check(sub as JsonSchema, v[k], child(path, k), errs);
          break;
        case "required":
          if (isObj(v))
            for (const k of arg as string[]) if (!(k in v)) fail("is required", child(path, k));
          break;
        case "additionalProperties":
          if (isObj(v)) {
            const known = isObj(s.properties) ? s.properties : {};
            for (const k of Object.keys(v))
              if (!(k in known)) {
                if (arg === false) fail("is not a known field", child(path, k));
                else this.check(a, v[k], child(path, k), errs);
              }
          }
          break;
        case "propertyNames":
          if (isObj(v))
            for (const k of Object.keys(v)) {
              const sub: SchemaError[] = [];
              this.check(a, k, path, sub);
              if (sub.length) fail(`name "${k}" ${sub[0]!.message}`, child(path, k));
            }
          break;
        case "maxProperties":
          if (isObj(v) && Object.keys(v).length > a) fail(`must have at most ${a} members`);
          break;
        case "items":
          if (Array.isArray(v)) v.forEach((x, i) => this.check(a, x, child(path, i), errs));
          break;
        case "minItems":
          if (Array.isArray(v) && v.length < a) fail(`must have at least ${a} items`);
          break;
        case "maxItems":
          if (Array.isArray(v) && v.length > a) fail(`must have at most ${a} items`);
          break;
        case "uniqueItems":
          if (arg === true && Array.isArray(v))
            if (v.some((x, i) => v.findIndex((y) => equal(x, y)) !== i))
              fail("must not have duplicate items");
          break;
        case "minLength":
          if (typeof v === "string" && [...v].length < a)
            fail(`must be at least ${a} characters`);
          break;
        case "maxLength":
          if (typeof v === "string" && [...v].length > a) fail(`must be at most ${a} characters`);
          break;
        case "pattern":
          if (typeof v === "string" && !regex(a).test(v)) fail(`must match ${a}`);
          break;
        case "minimum":
          if (typeof v === "number" && v < a) fail(`must be at least ${a}`);
          break;
        case "maximum":
          if (typeof v === "number" && v > a) fail(`must be at most ${a}`);
          break;
        case "allOf":
          for (const sub of arg as JsonSchema[]) this.check(sub, v, path, errs);
          break;
        case "anyOf":
          if (!(arg as JsonSchema[]).some((sub) => this.ok(sub, v)))
            fail("must match one of the allowed forms");
          break;
        case "oneOf":
          if ((arg as JsonSchema[]).filter((sub) => this.ok(sub, v)).length !== 1)
            fail("must match exactly one of the allowed forms");
          break;
        case "not":
          if (this.ok(a, v)) fail("is not allowed here");
          break;
        case "if": {
          const branch = this.ok(a, v) ? s.then : s.else;
          if (branch !== undefined) this.check(branch as JsonSchema, v, path, errs);
          break;
        }
        case "then":
        case "else":
          break;
        default:
          throw new Error(`schema: unsupported keyword "${kw}"`);
      }
    }
    // Report one error per field: the first is the most useful.
    if (errs.length > n + 1) {
      const seen = new Set<string>();
      const kept = errs.splice(n).filter((e) => !seen.has(e.path) && seen.add(e.path));
      errs.push(...kept);
    }
  }

  ok(s: JsonSchema, v: unknown): boolean {
    const errs: SchemaError[] = [];
    this.check(s, v, "", errs);
    return errs.length === 0;
  }
}

/** Validates `value` against `schema`; returns the errors (empty when valid). */
export function validateSchema(schema: JsonSchema, value: unknown): SchemaError[] {
  const errs: SchemaError[] = [];
  new Validator(schema).check(schema, value, "", errs);
  return errs;
}
