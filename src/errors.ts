/**
 * flowlb's error classes. Each has a stable `code` (callers and tests switch on it, never on the message)
 * and the process exit code the CLI uses for it. Messages are one line that names the problem and the
 * offending value, because the CLI prints exactly `flowlb: <message>` and nothing else for these errors.
 */

/** Exit code for a problem the user can fix by changing flags, the config file or the handler module. */
export const EXIT_USAGE = 2;
/** Exit code for a failure while running (an address in use, a worker that cannot start). */
export const EXIT_RUNTIME = 1;

export class FlowlbError extends Error {
  readonly code: string;
  readonly exitCode: number;

  constructor(code: string, message: string, exitCode: number = EXIT_RUNTIME, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
    this.exitCode = exitCode;
    this.name = new.target.name;
  }
}

/** Invalid flags or config file contents (also a rejected SIGHUP reload). */
export class ConfigError extends FlowlbError {
  constructor(message: string, options?: ErrorOptions) {
    super('ERR_CONFIG', message, EXIT_USAGE, options);
  }
}

/** Bad command line syntax caught by the argument parser: unknown option, missing value, no command. */
export class UsageError extends FlowlbError {
  constructor(message: string, options?: ErrorOptions) {
    super('ERR_USAGE', message, EXIT_USAGE, options);
  }
}

/** A listening socket (UDP or the status HTTP server) could not be bound. The message names the address. */
export class BindError extends FlowlbError {
  constructor(message: string, options?: ErrorOptions) {
    super('ERR_BIND', message, EXIT_RUNTIME, options);
  }
}

/**
 * A handler module could not be loaded or does not implement FlowHandler. It is the user's module that
 * is wrong, so it exits like a config error.
 */
export class HandlerLoadError extends FlowlbError {
  constructor(message: string, options?: ErrorOptions) {
    super('ERR_HANDLER', message, EXIT_USAGE, options);
  }
}

const ERROR_CLASSES: Readonly<Record<string, new (message: string) => FlowlbError>> = {
  ERR_CONFIG: ConfigError,
  ERR_USAGE: UsageError,
  ERR_BIND: BindError,
  ERR_HANDLER: HandlerLoadError,
};

/** The plain form of an error that crosses IPC (worker to primary); errors lose their class on the way. */
export interface SerializedError {
  readonly code: string;
  readonly message: string;
}

export function serializeError(err: unknown): SerializedError {
  if (err instanceof FlowlbError) return { code: err.code, message: err.message };
  if (err instanceof Error) return { code: (err as NodeJS.ErrnoException).code ?? 'ERR_INTERNAL', message: err.message };
  return { code: 'ERR_INTERNAL', message: String(err) };
}

/** Rebuilds the right FlowlbError subclass from its serialized form; unknown codes give a plain FlowlbError. */
export function deserializeError(data: SerializedError): FlowlbError {
  const ErrorClass = ERROR_CLASSES[data.code];
  return ErrorClass ? new ErrorClass(data.message) : new FlowlbError(data.code, data.message);
}

export function isFlowlbError(err: unknown): err is FlowlbError {
  return err instanceof FlowlbError;
}
