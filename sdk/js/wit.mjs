// The WIT a QuickJS build is made against: Gantry's own, with each world's
// local types (the gate's `retry`, `decision` and `verdict`, ...) moved into
// an interface `<world>-types` that the world uses. The two describe the
// same values, so the host cannot tell the components apart; QuickJS's
// componentizer (componentize-qjs 0.4) writes an invalid component when a
// world-level type refers to another type, and handles interface types.

const DECLARATION = /^\s*(record|variant|enum|flags|type)\s+([a-z][a-z0-9-]*)\b/;
const USE = /^\s*use\s+[^;]+;\s*$/;
const WORLD = /^world\s+([a-z][a-z0-9-]*)\s*\{\s*$/;

/** `{` less `}` on a line, outside its `//` comment. */
function depthChange(line) {
  const code = line.replace(/\/\/.*$/, '');
  return (code.match(/\{/g) ?? []).length - (code.match(/\}/g) ?? []).length;
}

/**
 * The world starting at `lines[start]` split into its `use` lines, its
 * local type declarations (with their doc comments) and everything else;
 * `end` is the line of its closing brace.
 */
function splitWorld(lines, start) {
  const world = { uses: [], types: [], names: [], rest: [], end: -1 };
  let docs = [];
  let i = start + 1;
  for (let depth = 1; i < lines.length; i += 1) {
    const line = lines[i];
    const declaration = depth === 1 ? DECLARATION.exec(line) : null;
    if (depth === 1 && /^\s*}\s*$/.test(line)) {
      world.end = i;
      world.rest.push(...docs);
      return world;
    }
    if (depth === 1 && /^\s*\/\/\//.test(line)) {
      docs.push(line);
      continue;
    }
    if (declaration) {
      const body = [...docs, line];
      let inner = depthChange(line);
      while (inner > 0 && i + 1 < lines.length) {
        i += 1;
        body.push(lines[i]);
        inner += depthChange(lines[i]);
      }
      world.types.push(...body);
      world.names.push(declaration[2]);
    } else {
      if (depth === 1 && USE.test(line)) world.uses.push(line.trim());
      world.rest.push(...docs, line);
      depth += depthChange(line);
    }
    docs = [];
  }
  throw new Error(`wit: world at line ${start + 1} is not closed`);
}

/** `wit` (one WIT file's text) with every world's local types in an interface `<world>-types`. */
export function hoistWorldTypes(wit) {
  const lines = wit.split('\n');
  const out = [];
  for (let i = 0; i < lines.length; i += 1) {
    const opened = WORLD.exec(lines[i]);
    if (!opened) {
      out.push(lines[i]);
      continue;
    }
    const name = opened[1];
    const world = splitWorld(lines, i);
    if (world.names.length > 0) {
      out.push(`interface ${name}-types {`, ...world.uses.map((u) => `    ${u}`), ...world.types, '}', '');
    }
    out.push(lines[i]);
    if (world.names.length > 0) out.push(`    use ${name}-types.{${world.names.join(', ')}};`);
    out.push(...world.rest, lines[world.end]);
    i = world.end;
  }
  return out.join('\n');
}
