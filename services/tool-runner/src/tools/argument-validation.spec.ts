import { parseAndValidateArguments } from "./argument-validation";
import { builtinToolNames, createBuiltinTools } from "./builtin-tools";
import { createEditFileTool } from "./edit-file";
import { createReadFileTool } from "./read-file";
import { ToolArgumentError, type ToolDefinition } from "./tool";
import { createToolRegistry } from "./tool-registry";

const editFile = createEditFileTool();
const readFile = createReadFileTool();

describe("parseAndValidateArguments", () => {
  it("returns the parsed arguments when they fit the schema", () => {
    expect(parseAndValidateArguments(editFile, '{"path":"a.ts","old_string":"x","new_string":"y","replace_all":true}')).toEqual({
      path: "a.ts",
      old_string: "x",
      new_string: "y",
      replace_all: true,
    });
  });

  it("takes an empty string as {}", () => {
    const listFiles = createToolRegistry(createBuiltinTools()).get("list_files")!;
    expect(parseAndValidateArguments(listFiles, "")).toEqual({});
    expect(() => parseAndValidateArguments(readFile, "")).toThrow('arguments_json: missing required "path"');
  });

  it.each<[string, ToolDefinition<never>, string, string]>([
    ["a wrong type", readFile, '{"path":3}', 'arguments_json: "path" must be string'],
    ["a missing field", editFile, '{"path":"a","new_string":"b"}', 'arguments_json: missing required "old_string"'],
    ["an unknown field", readFile, '{"pth":"a"}', 'arguments_json: missing required "path"; unknown field "pth"'],
    ["a number out of range", readFile, '{"path":"a","start_line":0}', 'arguments_json: "start_line" must be >= 1'],
    ["a fraction for an integer", readFile, '{"path":"a","end_line":1.5}', 'arguments_json: "end_line" must be integer'],
    ["an empty old_string", editFile, '{"path":"a","old_string":"","new_string":"b"}', 'arguments_json: "old_string" must NOT have fewer than 1 characters'],
    ["malformed JSON", readFile, '{"path": ', "arguments_json: not valid JSON ("],
    ["an array", readFile, "[1]", "arguments_json: not valid JSON (expected an object, got an array)"],
    ["null", readFile, "null", "arguments_json: not valid JSON (expected an object, got null)"],
    ["a string", readFile, '"a.ts"', "arguments_json: not valid JSON (expected an object, got string)"],
  ])("refuses %s with an argument error naming the field", (_, tool, json, message) => {
    let thrown: unknown;
    try {
      parseAndValidateArguments(tool, json);
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(ToolArgumentError);
    expect((thrown as Error).message.startsWith(message)).toBe(true);
  });

  it("names every problem at once", () => {
    expect(() => parseAndValidateArguments(editFile, '{"path":1,"extra":true}')).toThrow(
      'arguments_json: missing required "old_string"; missing required "new_string"; unknown field "extra"; "path" must be string',
    );
  });

  it("refuses arguments larger than the limit before parsing them", () => {
    const content = "x".repeat(2000);
    expect(() => parseAndValidateArguments(readFile, JSON.stringify({ path: content }), 1000)).toThrow(/^arguments_json: too large \(2\d{3} bytes; at most 1000\)$/);
    expect(parseAndValidateArguments(readFile, JSON.stringify({ path: content }), 4000)).toEqual({ path: content });
  });
});

describe("createToolRegistry", () => {
  it("holds the built-in tools by name, in order", () => {
    const registry = createToolRegistry(createBuiltinTools());
    expect(registry.list().map((tool) => tool.name)).toEqual([...builtinToolNames]);
    expect(registry.get("edit_file")?.readOnly).toBe(false);
    expect(registry.get("search_code")?.readOnly).toBe(true);
    expect(registry.get("semantic_search")).toBeUndefined();
  });

  it("registers a plugin, and refuses a taken name, a bad name and a schema that does not compile", () => {
    const registry = createToolRegistry(createBuiltinTools());
    const plugin: ToolDefinition = {
      name: "count_lines",
      description: "Counts lines.",
      parameters: { type: "object", properties: {}, additionalProperties: false },
      readOnly: true,
      execute: async () => ({ success: true, output: "0", truncated: false }),
    };
    registry.register(plugin);
    expect(registry.get("count_lines")).toBe(plugin);
    expect(() => registry.register(plugin)).toThrow('tool "count_lines" is registered twice');
    expect(() => registry.register({ ...plugin, name: "Count Lines" })).toThrow('tool name "Count Lines": use 1-64 lowercase letters');
    expect(() => registry.register({ ...plugin, name: "broken", parameters: { type: "object", propertees: {} } })).toThrow(
      /^tool "broken": invalid parameters schema: strict mode: unknown keyword: "propertees"/,
    );
  });
});
