/**
 * VM templates: a few built in, and the user's own in `ferry.templates.json` beside the cluster file, as
 * `{"templates": [{"name", "memory", "disk"?, "workload", "rate"?, "wss"?, "cpu"?, "image"?, "userData"?}]}`. A user
 * template may replace a built-in one of the same name.
 *
 * `cpu` is the CPU model of VMs made from it. `image` names the software the VM starts with: provisioning clones it
 * into the VM's disk0 (its size, or `disk` if that is larger). `userData` goes into the VM's config drive
 * (cidata.json) for the guest to read. A template needs a `disk`, an `image`, or both.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { cpuModelNameSchema } from '../shared/cpu.js';
import { ErrorCode, FerryError } from '../shared/errors.js';
import { imageNameSchema, MAX_USER_DATA_BYTES, workloadKindSchema } from '../shared/protocol.js';

export const templateSchema = z.object({
  name: z.string().regex(/^[a-z0-9][a-z0-9-]*$/),
  memory: z.string(),
  disk: z.string().optional(),
  workload: workloadKindSchema,
  rate: z.number().int().min(0).default(0),
  wss: z.string().optional(),
  description: z.string().default(''),
  /** The CPU model of VMs made from it (`host`, a level, `baseline`); `--cpu` overrides it; default `baseline`. */
  cpu: cpuModelNameSchema.optional(),
  /** The image cloned into disk0 (ferry image list). */
  image: imageNameSchema.optional(),
  /** User data for the config drive (cloud-init's user-data): a script, a cloud-config, anything the guest reads. */
  userData: z.string().max(MAX_USER_DATA_BYTES).optional(),
}).refine((template) => template.disk !== undefined || template.image !== undefined, { message: 'a template needs a disk, an image, or both', path: ['disk'] });
export type Template = z.infer<typeof templateSchema>;

export const builtInTemplates: Template[] = [
  { name: 'small', memory: '256MiB', disk: '2GiB', workload: 'pattern', rate: 1000, wss: '64MiB', description: 'a small service' },
  { name: 'medium', memory: '1GiB', disk: '8GiB', workload: 'hotset', rate: 5000, wss: '256MiB', description: 'an application server' },
  { name: 'large', memory: '4GiB', disk: '32GiB', workload: 'hotset', rate: 20000, wss: '1GiB', description: 'a database' },
];

export function templatesFile(clusterFile: string): string {
  return path.join(path.dirname(clusterFile), 'ferry.templates.json');
}

/** Built-in templates, then the user's (which win on a name they share). */
export async function loadTemplates(clusterFile: string): Promise<(Template & { source: string })[]> {
  const file = templatesFile(clusterFile);
  let user: Template[] = [];
  try {
    const parsed = z.object({ templates: z.array(templateSchema) }).safeParse(JSON.parse(await readFile(file, 'utf8')));
    if (!parsed.success) {
      throw new FerryError(ErrorCode.BAD_INPUT, `${file}: ${parsed.error.issues[0]?.path.join('.')}: ${parsed.error.issues[0]?.message}`, 'it should look like {"templates":[{"name":"tiny","memory":"64MiB","disk":"1GiB","workload":"idle"}]}');
    }
    user = parsed.data.templates;
  } catch (error) {
    if (error instanceof FerryError) throw error;
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new FerryError(ErrorCode.BAD_INPUT, `cannot read ${file}: ${(error as Error).message}`, 'fix the file or remove it');
    }
  }
  const names = new Set(user.map((template) => template.name));
  return [
    ...builtInTemplates.filter((template) => !names.has(template.name)).map((template) => ({ ...template, source: 'built-in' })),
    ...user.map((template) => ({ ...template, source: file })),
  ];
}
