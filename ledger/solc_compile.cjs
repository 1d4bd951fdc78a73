// Run the pinned solc-js on a standard-JSON input (stdin) and write the output to a file.
// Called by ledger/compile.py; writing a file avoids solcjs's truncated stdout on large outputs.
const fs = require("fs");
const path = require("path");
const solc = require("solc");

function findImports(importPath) {
  const file = path.join(__dirname, "node_modules", importPath);
  if (!fs.existsSync(file)) return { error: `import not found: ${importPath}` };
  return { contents: fs.readFileSync(file, "utf8") };
}

const input = fs.readFileSync(0, "utf8");
const output = solc.compile(input, { import: findImports });
fs.writeFileSync(process.argv[2], output);
process.stdout.write(`solc ${solc.version()}\n`);
