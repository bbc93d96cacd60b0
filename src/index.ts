/**
 * flowlb as a library: start the service from code, and the types a handler module implements.
 */
export { startService, type RunningService } from './control/primary.js';
export { resolveConfig, validateConfigObject, defaultConfig, type FlowlbConfig, type Endpoint, type BackendSpec } from './config.js';
export { createLogger, type Logger } from './log.js';
export type { Flow, FlowHandler, FlowEndReason, HandlerContext, HandlerFactory, ExportedFlow } from './handlers/types.js';
export { hashTupleStrings, loadHasher, HASH_SEED } from './datapath/tuple.js';
export { runGenerator, findMaxRate } from './gen/run.js';
export { startBackend } from './gen/backend.js';
