/**
 * The destination's record of the migrations it activated: one small file per migration in the datastore, written
 * before the vCPU first runs. It answers, even after the agent restarts, the one question a source in doubt must
 * have answered before it may resume its own copy: did this copy ever run?
 *
 * Written without fsync: it survives the agent process dying (the crash ferry's fault tests inject), not the machine
 * losing power; an fsync would add its latency to every migration's downtime.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export class ActivationLog {
  private readonly folder: string | undefined;
  private readonly inMemory = new Set<string>();

  /** `folder` undefined keeps the log in memory only (the in-memory test network). */
  constructor(folder: string | undefined) {
    this.folder = folder;
    if (folder) mkdirSync(folder, { recursive: true });
  }

  record(migrationId: string, vm: string, epoch: number): void {
    this.inMemory.add(migrationId);
    if (!this.folder) return;
    writeFileSync(this.file(migrationId), `${JSON.stringify({ migrationId, vm, epoch, activatedAt: new Date().toISOString() })}\n`);
  }

  activated(migrationId: string): boolean {
    return this.inMemory.has(migrationId) || (this.folder !== undefined && existsSync(this.file(migrationId)));
  }

  private file(migrationId: string): string {
    // Migration ids are UUIDs from the coordinator; anything else is refused rather than used as a path.
    if (!/^[0-9a-f-]{8,64}$/i.test(migrationId)) throw new Error(`bad migration id ${migrationId}`);
    return path.join(this.folder!, `${migrationId}.json`);
  }
}
