// Lint rules that keep promises awaited, type imports explicit and package boundaries intact.
import importX from "eslint-plugin-import-x";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["**/dist/**", "**/node_modules/**", "libs/proto/src/gen/**", "**/*.js", "**/*.mjs", "**/*.cjs", "test/clients/**"] },
  {
    files: ["**/*.ts"],
    extends: [tseslint.configs.base],
    plugins: { "import-x": importX },
    languageOptions: {
      parserOptions: { project: ["./tsconfig.spec.json"], tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // An unawaited promise is work nobody waits for and errors nobody sees.
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": ["error", { checksVoidReturn: { arguments: false } }],
      "@typescript-eslint/consistent-type-imports": ["error", { fixStyle: "inline-type-imports" }],
      "import-x/no-cycle": "error",
      // Packages talk through their public entry points only.
      "no-restricted-imports": [
        "error",
        { patterns: [{ group: ["@vlinders/*/src/*", "@vlinders/*/dist/*", "../../libs/*", "../../services/*"], message: "import the package, not its files" }] },
      ],
    },
  },
);
