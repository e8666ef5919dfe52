// The ui's page for `ferry ui` (coordinator/ui/server.ts serves dist/ui): its HTML and CSS, and the charting
// libraries' browser builds copied from node_modules, so the page needs no CDN. `npm run build` runs this after tsc
// has compiled ui/src into dist/ui.
import { access, copyFile, mkdir } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'dist', 'ui');
const require = createRequire(path.join(root, 'package.json'));

/** Each library's own minified browser build (a UMD script that sets a global: vega, vegaLite, vegaEmbed). */
const vendor = {
  'vega.min.js': 'vega/build/vega.min.js',
  'vega-lite.min.js': 'vega-lite/build/vega-lite.min.js',
  'vega-embed.min.js': 'vega-embed/build/vega-embed.min.js',
};

await mkdir(path.join(out, 'vendor'), { recursive: true });
for (const file of ['index.html', 'style.css']) await copyFile(path.join(root, 'ui', file), path.join(out, file));
/** The folder of package `name`: up from its entry point to its package.json (its exports may hide both). */
async function packageFolder(name) {
  let folder = path.dirname(require.resolve(name));
  for (;;) {
    if (path.basename(folder) === name && await access(path.join(folder, 'package.json')).then(() => true, () => false)) return folder;
    const parent = path.dirname(folder);
    if (parent === folder) throw new Error(`cannot find the folder of ${name}: run npm ci`);
    folder = parent;
  }
}

for (const [name, file] of Object.entries(vendor)) {
  const [pkg, ...rest] = file.split('/');
  await copyFile(path.join(await packageFolder(pkg), ...rest), path.join(out, 'vendor', name));
}
