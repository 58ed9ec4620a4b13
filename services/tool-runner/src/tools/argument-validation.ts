import Ajv2020, { type ErrorObject, type ValidateFunction } from "ajv/dist/2020";
import { ToolArgumentError, type ToolDefinition } from "./tool";

/**
 * Largest arguments_json accepted. gRPC's default message limit is 4 MiB, so a larger request
 * never reaches the service unless its server limit is raised; the check keeps a parse of a huge
 * string from blocking the event loop whatever that limit is.
 */
export const defaultMaxArgumentsBytes = 4 * 1024 * 1024;

// strict: a schema with a typo (an unknown keyword) fails at compile time, not silently at run time.
const ajv = new Ajv2020({ strict: true, allErrors: true });
const compiled = new WeakMap<ToolDefinition<never>, ValidateFunction>();

/**
 * Compiles a tool's parameter schema (once per tool; later calls reuse it). Registering a tool
 * calls this, so that a broken schema fails at start rather than at the first call.
 */
export function compileToolSchema(tool: ToolDefinition<never>): ValidateFunction {
  let validate = compiled.get(tool);
  if (!validate) {
    try {
      validate = ajv.compile(tool.parameters);
    } catch (error) {
      throw new Error(`tool ${JSON.stringify(tool.name)}: invalid parameters schema: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    }
    compiled.set(tool, validate);
  }
  return validate;
}

/**
 * Parses a call's arguments_json and validates it against the tool's schema. An empty string is
 * `{}`. Every problem is a ToolArgumentError naming `arguments_json` and the field(s), e.g.
 * `arguments_json: missing required "old_string"; "path" must be string`.
 */
export function parseAndValidateArguments<Arguments>(
  tool: ToolDefinition<Arguments>,
  argumentsJson: string,
  maxBytes = defaultMaxArgumentsBytes,
): Arguments {
  // Characters are at most 3 bytes of UTF-8 for a string of UTF-16 units; measure only when it can matter.
  if (argumentsJson.length * 3 > maxBytes) {
    const size = Buffer.byteLength(argumentsJson, "utf8");
    if (size > maxBytes) throw new ToolArgumentError(`arguments_json: too large (${size} bytes; at most ${maxBytes})`);
  }
  let value: unknown;
  if (argumentsJson.trim() === "") {
    value = {};
  } else {
    try {
      value = JSON.parse(argumentsJson);
    } catch (error) {
      throw new ToolArgumentError(`arguments_json: not valid JSON (${error instanceof Error ? error.message : String(error)})`);
    }
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ToolArgumentError(`arguments_json: not valid JSON (expected an object, got ${value === null ? "null" : Array.isArray(value) ? "an array" : typeof value})`);
  }
  const validate = compileToolSchema(tool as ToolDefinition<never>);
  if (!validate(value)) {
    throw new ToolArgumentError(`arguments_json: ${describeErrors(validate.errors ?? [])}`);
  }
  return value as Arguments;
}

/** One phrase per problem, in the words a caller would use: field names, not JSON pointers. */
function describeErrors(errors: readonly ErrorObject[]): string {
  const phrases = errors.map((error) => {
    const field = fieldName(error.instancePath);
    const params = error.params as Record<string, unknown>;
    switch (error.keyword) {
      case "required":
        return `missing required ${quoteField(field, String(params.missingProperty))}`;
      case "additionalProperties":
        return `unknown field ${quoteField(field, String(params.additionalProperty))}`;
      case "type":
        return `${describeField(field)} must be ${String(params.type)}`;
      default:
        return `${describeField(field)} ${error.message ?? "is invalid"}`;
    }
  });
  return [...new Set(phrases)].join("; ");
}

/** "/a/0/b" -> "a[0].b"; "" for the arguments object itself. */
function fieldName(instancePath: string): string {
  return instancePath
    .split("/")
    .slice(1)
    .map((part) => part.replace(/~1/g, "/").replace(/~0/g, "~"))
    .reduce((name, part) => (/^\d+$/.test(part) ? `${name}[${part}]` : name === "" ? part : `${name}.${part}`), "");
}

function quoteField(parent: string, name: string): string {
  return JSON.stringify(parent === "" ? name : `${parent}.${name}`);
}

function describeField(field: string): string {
  return field === "" ? "the arguments" : JSON.stringify(field);
}
