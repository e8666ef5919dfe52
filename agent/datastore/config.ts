/**
 * What a VM folder's `config.json` holds, and what the datastore knows of a VM that exists only as files.
 */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { vmCpuModelSchema, type VmCpuModel } from '../../shared/cpu.js';
import {
  agentUrlSchema, guestFactsSchema, migrationIdSchema, networkSchema, registersSchema, vmInfoSchema, vmNameSchema, workloadSpecSchema, type Registers,
} from '../../shared/protocol.js';

export const vmConfigSchema = z.object({
  name: vmNameSchema,
  memoryBytes: z.number().int().positive(),
  workload: workloadSpecSchema,
  epoch: z.number().int().min(1),
  /** Disk images: in the VM's folder, or (`shared`) in the shared storage every agent of the cluster mounts. */
  disks: z.array(z.object({ file: z.string().regex(/^disk\d{1,3}\.img$/), sizeBytes: z.number().int().positive(), shared: z.boolean().optional() })),
  network: networkSchema.nullable(),
  leaseUntil: z.string().nullable().default(null),
  /** Set on a VM that arrived by cold migration until its source has dropped its copy (migration/cold.ts). */
  coldFrom: z.object({ migrationId: migrationIdSchema, sourceUrl: agentUrlSchema }).optional(),
  createdAt: z.string(),
  /**
   * The VM's CPU model and the flags its guest was started with (shared/cpu.ts). A config written before ferry had
   * CPU models has none: it loads as `baseline` with the flags of the host it is on (`withCpuModel`), which is what
   * that VM has been running with.
   */
  cpuModel: vmCpuModelSchema.optional(),
  /** The image disk0 was cloned from at provisioning, how, and how long it took. */
  image: vmInfoSchema.shape.image,
  /**
   * The pattern workload's disk registers when the VM was last powered off: the disk keeps what the guest wrote, so a
   * fresh boot goes on writing it from there (memory starts over; the disk does not), and the disk stays checkable.
   */
  diskRegisters: z.object({ y: z.number().int().min(0).max(0xffffffff), m: z.number().int().min(0) }).optional(),
});
/** config.json as it may lie on disk, from any version of ferry. */
export type VmConfigFile = z.infer<typeof vmConfigSchema>;
/** A VM's config once loaded: its CPU model always known. */
export type VmConfig = VmConfigFile & { cpuModel: VmCpuModel };

/** A config as loaded on a host whose CPU offers `hostFlags`: one without a CPU model gets that host's, as `baseline`. */
export function withCpuModel(config: VmConfigFile, hostFlags: readonly string[]): VmConfig {
  return { ...config, cpuModel: config.cpuModel ?? { model: 'baseline', flags: [...hostFlags] } };
}

/** suspend.json; `guest`: what the guest had taken from its config drive, which it keeps across a suspend. */
export const suspendSchema = z.object({ registers: registersSchema, memoryBytes: z.number(), sha256: z.string(), takenAt: z.string(), guest: guestFactsSchema.optional() });

/** A VM that exists here only as files: powered off (defined), or suspended to disk. */
export interface StoredVm {
  config: VmConfig;
  suspended: boolean;
  /** A suspended VM's registers, as saved. */
  registers?: Registers;
}

/** A locally administered, unicast MAC address. */
export function randomMac(): string {
  const bytes = randomBytes(6);
  bytes[0] = (bytes[0]! & 0xfe) | 0x02;
  return [...bytes].map((byte) => byte.toString(16).padStart(2, '0')).join(':');
}
