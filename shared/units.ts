/**
 * Sizes, rates and durations as people write them ("256MiB", "1GiB/s", "300ms"), and back.
 * Binary prefixes (KiB, MiB, GiB) are powers of 1024; decimal ones (KB, MB, GB) powers of 1000. A bare number is
 * bytes, bytes per second or milliseconds.
 */
import { ErrorCode, FerryError } from './errors.js';

const sizeUnits: Record<string, number> = {
  b: 1,
  k: 1024, kb: 1000, kib: 1024,
  m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1000 ** 4, tib: 1024 ** 4,
};

/** Bits per second, as links are sold: "1gbit", "100mbit". */
const bitRateUnits: Record<string, number> = {
  bit: 1 / 8, kbit: 1000 / 8, mbit: 1000 ** 2 / 8, gbit: 1000 ** 3 / 8,
};

const durationUnits: Record<string, number> = {
  us: 0.001, ms: 1, s: 1000, m: 60_000, min: 60_000, h: 3_600_000, d: 86_400_000,
};

const quantity = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i;

function parseWith(text: string, units: Record<string, number>, what: string, example: string): number {
  const match = quantity.exec(text);
  const unit = match?.[2]?.toLowerCase() ?? '';
  const factor = unit === '' ? 1 : units[unit];
  if (!match || factor === undefined) {
    throw new FerryError(ErrorCode.BAD_INPUT, `"${text}" is not a ${what}`, `write it like ${example}`);
  }
  return Number(match[1]) * factor;
}

export function parseSize(text: string): number {
  const bytes = parseWith(text, sizeUnits, 'size', '256MiB, 1GiB or 4096');
  if (!Number.isSafeInteger(Math.round(bytes))) {
    throw new FerryError(ErrorCode.BAD_INPUT, `size "${text}" is too large`, 'use a size below 8 PiB');
  }
  return Math.round(bytes);
}

export function parseRate(text: string): number {
  const trimmed = text.trim().toLowerCase();
  if (trimmed.endsWith('/s')) {
    return parseWith(trimmed.slice(0, -2), { ...bitRateUnits, ...sizeUnits }, 'rate', '1GiB/s, 500MB/s or 1gbit');
  }
  return parseWith(trimmed, { ...bitRateUnits, ...sizeUnits }, 'rate', '1GiB/s, 500MB/s or 1gbit');
}

export function parseDuration(text: string): number {
  return parseWith(text, durationUnits, 'duration', '300ms, 2s or 1.5m');
}

/** Whole positive count, such as a rate in page writes per second or a round cap. */
export function parseCount(text: string, what: string): number {
  const trimmed = text.trim();
  const value = /^\d[\d_]*$/.test(trimmed) ? Number(trimmed.replace(/_/g, '')) : Number.NaN;
  if (!Number.isSafeInteger(value)) {
    throw new FerryError(ErrorCode.BAD_INPUT, `${what} "${text}" is not a whole number`, 'write it like 20000');
  }
  return value;
}

export function formatBytes(bytes: number): string {
  const abs = Math.abs(bytes);
  if (abs < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let index = 0;
  const digitsFor = (v: number): number => (Math.abs(v) >= 100 || Number.isInteger(v) ? 0 : Math.abs(v) >= 10 ? 1 : 2);
  // Move up a unit also when rounding would print 1024 of this one.
  while (index < units.length - 1 && Math.abs(Number(value.toFixed(digitsFor(value)))) >= 1024) {
    value /= 1024;
    index += 1;
  }
  return `${value.toFixed(digitsFor(value))} ${units[index]}`;
}

export function formatRate(bytesPerSec: number): string {
  return `${formatBytes(bytesPerSec)}/s`;
}

export function formatDuration(ms: number): string {
  if (ms < 1) return `${(ms * 1000).toFixed(0)} µs`;
  if (ms < 10) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(1)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(2)} s`;
  return `${(ms / 60_000).toFixed(1)} min`;
}
