/**
 * Errors raised by the traffic generator and the backend simulator. Each has a stable `code` so scripts
 * (and the CLI's exit path) can tell a bad option from an exhausted resource without parsing messages.
 */
export type GenErrorCode =
  | 'ERR_GEN_OPTION' // an option is missing, malformed or out of range
  | 'ERR_GEN_RESOURCE' // a limit of this machine: open files, ephemeral ports
  | 'ERR_GEN_SOCKET' // binding or connecting a socket failed
  | 'ERR_GEN_CHILD' // a sender or echo child process failed or timed out
  | 'ERR_GEN_BUILD'; // the compiled child entry point is missing (run `npm run build`)

export class GenError extends Error {
  readonly code: GenErrorCode;

  constructor(code: GenErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'GenError';
    this.code = code;
  }
}
