// Builds a JavaScript plugin into a component: `node build.mjs --dir DIR
// --world gate|notifier|migration --wit WIT_DIR --out FILE [--engine
// quickjs|spidermonkey]`. `gantry plugin build` runs it.
//
// The plugin's `app.js` and this SDK are copied into a scratch directory
// beside an entry module that installs the WIT host (`host.js`, and
// `host-sql.js` for a migration) and re-exports the world's functions from
// `app.js`; the componentizer sees only that directory. QuickJS
// (componentize-qjs) is the default engine; SpiderMonkey
// (componentize-js) runs code that needs full JavaScript compatibility, at
// several times the size and call time.

import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { hoistWorldTypes } from './wit.mjs';

const SDK = dirname(fileURLToPath(import.meta.url));
const SDK_FILES = ['gantry.js', 'host.js', 'host-sql.js', 'sql-values.js'];
const EXPORTS = { gate: ['evaluate'], notifier: ['notify'], migration: ['up', 'down'] };
const ENGINES = {
  quickjs: 'componentize-qjs',
  spidermonkey: '@bytecodealliance/componentize-js',
};
const SKIPPED = new Set(['node_modules', 'target', '.git', 'test', 'tests']);

/** The deepest directory holding both `a` and `b`. */
export function commonRoot(a, b) {
  const left = resolve(a).split(sep);
  const right = resolve(b).split(sep);
  let n = 0;
  while (n < left.length && n < right.length && left[n] === right[n]) n += 1;
  return left.slice(0, n).join(sep) || sep;
}

/** `to` as an import specifier from a module in `from`. */
function specifier(from, to) {
  const path = relative(from, to).split(sep).join('/');
  return path.startsWith('.') ? path : `./${path}`;
}

/** The entry module: the host first, then the world's exports from `app.js`. */
export function entrySource(world, appDir, sdkDir) {
  const names = EXPORTS[world];
  if (!names) throw new Error(`unknown world \`${world}\` (gate, notifier or migration)`);
  const host = world === 'migration' ? 'host-sql.js' : 'host.js';
  return [
    `import '${specifier(appDir, join(sdkDir, host))}';`,
    `export { ${names.join(', ')} } from './app.js';`,
    '',
  ].join('\n');
}

/** Copies the plugin's sources and the SDK into `stage`, at their places under their common root. */
function stageSources(dir, stage) {
  const root = commonRoot(dir, SDK);
  const appDir = join(stage, relative(root, dir));
  const sdkDir = join(stage, relative(root, SDK));
  const sources = (path) => !SKIPPED.has(basename(path)) && !path.endsWith('.test.js');
  cpSync(dir, appDir, { recursive: true, dereference: true, filter: sources });
  mkdirSync(sdkDir, { recursive: true });
  for (const file of SDK_FILES) cpSync(join(SDK, file), join(sdkDir, file));
  return { appDir, sdkDir };
}

/** The componentizer of `engine`, or an error saying what to install. */
async function componentizer(engine, dir) {
  const name = ENGINES[engine];
  if (!name) throw new Error(`unknown engine \`${engine}\` (quickjs or spidermonkey)`);
  try {
    return (await import(name)).componentize;
  } catch (error) {
    if (error?.code === 'ERR_MODULE_NOT_FOUND' && error.message.includes(`'${name}'`)) {
      throw new Error(`${name} is not installed: run \`npm install\` in ${dir} (node >= 18)`);
    }
    throw new Error(`${name} cannot be loaded: ${error?.message ?? error}`);
  }
}

/** Builds the plugin in `dir` and returns the component's bytes. */
export async function build({ dir, world, wit, engine = 'quickjs' }) {
  const componentize = await componentizer(engine, dir);
  const stage = mkdtempSync(join(tmpdir(), 'gantry-js-'));
  try {
    const { appDir, sdkDir } = stageSources(dir, stage);
    const entry = join(appDir, '.gantry-entry.js');
    writeFileSync(entry, entrySource(world, appDir, sdkDir));
    if (engine === 'spidermonkey') {
      process.chdir(stage);
      const options = { sourcePath: entry, witPath: wit, worldName: world, disableFeatures: ['http', 'fetch-event'] };
      return (await componentize(options)).component;
    }
    const witDir = join(stage, '.wit');
    mkdirSync(witDir);
    for (const file of readdirSync(wit).filter((f) => f.endsWith('.wit'))) {
      writeFileSync(join(witDir, file), hoistWorldTypes(readFileSync(join(wit, file), 'utf8')));
    }
    const source = readFileSync(entry, 'utf8');
    const options = { witPath: witDir, jsSource: source, jsPath: entry, moduleRoot: stage, world, sync: true };
    return (await componentize(options)).component;
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      dir: { type: 'string', default: '.' },
      world: { type: 'string', default: 'gate' },
      wit: { type: 'string' },
      out: { type: 'string' },
      engine: { type: 'string', default: 'quickjs' },
    },
  });
  if (!values.wit || !values.out) throw new Error('usage: build.mjs --dir DIR --world W --wit WIT_DIR --out FILE [--engine quickjs|spidermonkey]');
  const out = resolve(values.out);
  const component = await build({ dir: resolve(values.dir), world: values.world, wit: resolve(values.wit), engine: values.engine });
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, component);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((error) => {
    console.error(`gantry js build: ${error.message ?? error}`);
    process.exit(1);
  });
}
