/**
 * Giving released guest memory back: one collection for releases close together, none while a migration runs here.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { MemoryReturn } from '../../agent/memory-return.js';
import { createLogger } from '../../shared/log.js';

describe('MemoryReturn', () => {
  it('collects once for releases close together, and waits while a migration runs', async () => {
    let migrating = false;
    const memory = new MemoryReturn(() => migrating, createLogger('test', 'error'));
    try {
      memory.released();
      memory.released();
      memory.released();
      await expect.poll(() => memory.collections, { timeout: 5000, interval: 50 }).toBe(1);
      await delay(400);
      expect(memory.collections).toBe(1);

      migrating = true;
      memory.released();
      await delay(800);
      expect(memory.collections).toBe(1);
      migrating = false;
      await expect.poll(() => memory.collections, { timeout: 5000, interval: 50 }).toBe(2);
    } finally {
      memory.stop();
    }
  });
});
