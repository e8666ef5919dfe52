import { describe, expect, it } from 'vitest';
import { badInput } from '../bad-input.js';
import { formatBytes, formatDuration, formatRate, parseCount, parseDuration, parseRate, parseSize } from '../../shared/units.js';

describe('parseSize', () => {
  it('reads binary units as powers of 1024', () => {
    expect(parseSize('256MiB')).toBe(256 * 1024 * 1024);
    expect(parseSize('1GiB')).toBe(1024 ** 3);
    expect(parseSize('4KiB')).toBe(4096);
  });

  it('reads a bare number as bytes', () => {
    expect(parseSize('4096')).toBe(4096);
  });

  it('reads decimal units as powers of 1000 and ignores case and spaces', () => {
    expect(parseSize('1GB')).toBe(1e9);
    expect(parseSize('500mb')).toBe(500e6);
    expect(parseSize(' 2 gib ')).toBe(2 * 1024 ** 3);
  });

  it('accepts a fraction that comes out as whole bytes', () => {
    expect(parseSize('1.5GiB')).toBe(1.5 * 1024 ** 3);
  });

  it('rejects garbage with FERRY_ERR_BAD_INPUT and a hint', () => {
    for (const text of ['lots', '', '12 parsecs', '-1MiB', '1..5GiB', 'MiB', '1GiB/s']) {
      const error = badInput(() => parseSize(text));
      expect(error.message).toContain(text.trim() === '' ? '""' : text);
    }
  });
});

describe('parseRate', () => {
  it('reads bytes per second with a /s suffix', () => {
    expect(parseRate('1GiB/s')).toBe(1024 ** 3);
    expect(parseRate('500MB/s')).toBe(500e6);
  });

  it('reads link speeds in bits per second as bytes per second', () => {
    expect(parseRate('1gbit')).toBe(125_000_000);
    expect(parseRate('1gbit/s')).toBe(125_000_000);
    expect(parseRate('100mbit')).toBe(12_500_000);
  });

  it('reads a bare number as bytes per second', () => {
    expect(parseRate('4096')).toBe(4096);
  });

  it('rejects garbage with FERRY_ERR_BAD_INPUT and a hint', () => {
    for (const text of ['fast', '1 furlong/s', '/s', '1GiB/h', 'gbit']) badInput(() => parseRate(text));
  });
});

describe('parseDuration', () => {
  it('reads milliseconds, seconds and a bare number of milliseconds', () => {
    expect(parseDuration('300ms')).toBe(300);
    expect(parseDuration('2s')).toBe(2000);
    expect(parseDuration('1.5m')).toBe(90_000);
    expect(parseDuration('250')).toBe(250);
    expect(parseDuration('500us')).toBeCloseTo(0.5, 10);
  });

  it('rejects garbage with FERRY_ERR_BAD_INPUT and a hint', () => {
    for (const text of ['soon', '5 fortnights', '-3s', 's', '2s later']) badInput(() => parseDuration(text));
  });
});

describe('parseCount', () => {
  it('reads whole numbers, with underscores as digit separators', () => {
    expect(parseCount('20000', 'rate')).toBe(20000);
    expect(parseCount('20_000', 'rate')).toBe(20000);
    expect(parseCount('0', 'rate')).toBe(0);
  });

  it('rejects fractions, negative numbers and words with FERRY_ERR_BAD_INPUT, naming what was asked for', () => {
    for (const text of ['1.5', '-1', 'many', '12abc', '', '   ', '0x10', '1e3', '0b11']) {
      const error = badInput(() => parseCount(text, 'round cap'));
      expect(error.message).toContain('round cap');
    }
  });
});

describe('formatBytes', () => {
  it('moves up a unit rather than print 1024 of one', () => {
    expect(formatBytes(1024 * 1024 - 1)).toBe('1.00 MiB');
    expect(formatBytes(1024 ** 3 - 1024)).toBe('1.00 GiB');
  });

  it('prints small sizes in bytes', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1023)).toBe('1023 B');
  });

  it('prints whole binary units without decimals', () => {
    expect(formatBytes(1024)).toBe('1 KiB');
    expect(formatBytes(256 * 1024 ** 2)).toBe('256 MiB');
    expect(formatBytes(1024 ** 3)).toBe('1 GiB');
  });

  it('prints fractions with three significant digits', () => {
    expect(formatBytes(1536)).toBe('1.50 KiB');
    expect(formatBytes(10.5 * 1024 ** 2)).toBe('10.5 MiB');
    expect(formatBytes(150.3 * 1024 ** 2)).toBe('150 MiB');
    expect(formatBytes(1.25 * 1024 ** 3)).toBe('1.25 GiB');
  });

  it('formats a rate as bytes per second', () => {
    expect(formatRate(2 * 1024 ** 3)).toBe('2 GiB/s');
  });
});

describe('formatDuration', () => {
  it('picks µs, ms, s or min by magnitude', () => {
    expect(formatDuration(0.5)).toBe('500 µs');
    expect(formatDuration(5)).toBe('5.00 ms');
    expect(formatDuration(42.3)).toBe('42.3 ms');
    expect(formatDuration(1500)).toBe('1.50 s');
    expect(formatDuration(90_000)).toBe('1.5 min');
  });
});
