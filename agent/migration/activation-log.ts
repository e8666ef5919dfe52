/**
 * The destination's record of the migrations it activated: one small file per migration in the datastore, written
 * before the vCPU first runs. It answers, even after the agent restarts, the one question a source in doubt must
 * have answered before it may resume its own copy: did this copy ever run?
 *
 * A migration's file is made empty at its reservation (`prepare`), and the activation writes the record into it: one
 * write to a file already open, where making the file inside the pause took 0.26-0.6 ms here. An empty file is no
 * record (a reservation that never activated, or an agent that died before it did). A dropped reservation removes
 * its empty file.
 *
 * Written without fsync: it survives the agent process dying (the crash ferry's fault tests inject), not the machine
 * losing power; an fsync would add its latency to every migration's downtime.
 */
import { closeSync, existsSync, mkdirSync, openSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';

export class ActivationLog {
  private readonly folder: string | undefined;
  private readonly inMemory = new Set<string>();
  /** Files made at reservation, open, waiting for their record; by migration id. */
  private readonly prepared = new Map<string, number>();

  /** `folder` undefined keeps the log in memory only (the in-memory test network). */
  constructor(folder: string | undefined) {
    this.folder = folder;
    if (folder) mkdirSync(folder, { recursive: true });
  }

  /** At reservation: the migration's file, empty and open, so that the activation only writes into it. */
  prepare(migrationId: string): void {
    if (!this.folder || this.prepared.has(migrationId)) return;
    this.prepared.set(migrationId, openSync(this.file(migrationId), 'wx'));
  }

  /** A reservation dropped without activating: its empty file goes. */
  discard(migrationId: string): void {
    const fd = this.prepared.get(migrationId);
    if (fd === undefined) return;
    this.prepared.delete(migrationId);
    closeSync(fd);
    rmSync(this.file(migrationId), { force: true });
  }

  /**
   * Writes the record, and only then counts the migration as activated: a write that fails throws, and leaves no
   * record (nor a part of one) behind.
   */
  record(migrationId: string, vm: string, epoch: number): void {
    if (this.folder) {
      const text = `${JSON.stringify({ migrationId, vm, epoch, activatedAt: new Date().toISOString() })}\n`;
      const fd = this.prepared.get(migrationId);
      try {
        if (fd === undefined) writeFileSync(this.file(migrationId), text);
        else if (writeSync(fd, text) !== Buffer.byteLength(text)) throw new Error('short write');
      } catch (error) {
        if (fd !== undefined) this.discard(migrationId);
        else rmSync(this.file(migrationId), { force: true });
        throw error;
      }
      if (fd !== undefined) {
        this.prepared.delete(migrationId);
        // After the activation's reply: the record is in the file already.
        setImmediate(() => {
          try {
            closeSync(fd);
          } catch {
            // Already closed (the process is going down): the record was written before.
          }
        });
      }
    }
    this.inMemory.add(migrationId);
  }

  activated(migrationId: string): boolean {
    if (this.inMemory.has(migrationId)) return true;
    if (this.folder === undefined || !existsSync(this.file(migrationId))) return false;
    return statSync(this.file(migrationId)).size > 0;
  }

  private file(migrationId: string): string {
    // Migration ids are UUIDs from the coordinator; anything else is refused rather than used as a path.
    if (!/^[0-9a-f-]{8,64}$/i.test(migrationId)) throw new Error(`bad migration id ${migrationId}`);
    return path.join(this.folder!, `${migrationId}.json`);
  }
}
