/**
 * Prometheus metrics for the whole cluster. Placeholder until the metrics work lands: default process metrics only.
 */
import client from 'prom-client';
import type { ServiceView } from './http.js';

export interface Metrics {
  readonly contentType: string;
  render(): Promise<string>;
}

export function createMetrics(_v: ServiceView): Metrics {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'flowlb_primary_' });
  return { contentType: registry.contentType, render: () => registry.metrics() };
}
