export { parseYamlFile, validateYamlFile, type YamlFile } from "./yaml-file";
