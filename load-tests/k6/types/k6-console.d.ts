// k6 has a `console` (log, info, warn, error, debug: to k6's log output).
// @types/k6 leaves it to the DOM library, which k6 does not have; this
// declares only what k6 provides.
interface K6Console {
  log(...data: unknown[]): void;
  info(...data: unknown[]): void;
  warn(...data: unknown[]): void;
  error(...data: unknown[]): void;
  debug(...data: unknown[]): void;
}
declare var console: K6Console;
