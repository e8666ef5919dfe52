/**
 * Logging for the agent: one JSON object per line on stderr, so stdout stays free for the one JSON `ready` line
 * that harnesses wait for.
 *
 *   {"level":"warn","time":"2025-01-01T12:00:00.000Z","host":"host-b","vm":"web1","msg":"fault: delay at round-2"}
 *
 * `level` is the name, `time` ISO 8601, `host` the agent's name, then the fields as JSON values, then `msg`. Fields
 * named `level`, `time`, `host` or `msg` would clash with those keys: give them other names. An `error` or `err`
 * field holding an Error is written as its type, message and stack.
 *
 * Writes are synchronous: a line is on stderr before the call returns, so nothing is lost when the process exits
 * (an agent that crashes says why).
 */
import pino from 'pino';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/**
 * @param name the host's name, written into every line as `host`
 * @param minimum lines below this level are dropped
 * @param write where each line goes (with its newline); stderr by default
 */
export function createLogger(name: string, minimum: LogLevel = 'info', write?: (line: string) => void): Logger {
  const destination = write ? { write } : pino.destination({ dest: 2, sync: true });
  const logger = pino({
    level: minimum,
    base: { host: name },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    serializers: { error: pino.stdSerializers.err, err: pino.stdSerializers.err },
  }, destination);
  // pino takes the fields first; `fields ?? {}` also keeps a message with `%s` in it from being taken as a format.
  return {
    debug: (message, fields) => logger.debug(fields ?? {}, message),
    info: (message, fields) => logger.info(fields ?? {}, message),
    warn: (message, fields) => logger.warn(fields ?? {}, message),
    error: (message, fields) => logger.error(fields ?? {}, message),
  };
}
