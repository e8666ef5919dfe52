/**
 * The assertion every refusal of bad input shares: a FerryError with code FERRY_ERR_BAD_INPUT and a hint.
 */
import { expect } from 'vitest';
import { FerryError } from '../shared/errors.js';

/** Runs `fn`, expects it to throw a FerryError with code FERRY_ERR_BAD_INPUT and a hint, and returns it. */
export function badInput(fn: () => unknown): FerryError {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(FerryError);
  const error = caught as FerryError;
  expect(error.code).toBe('FERRY_ERR_BAD_INPUT');
  expect(typeof error.hint).toBe('string');
  expect(error.hint!.length).toBeGreaterThan(0);
  return error;
}
