/**
 * Charts for benchmark results, rendered in Node with no browser: vega-lite compiles the spec to vega, vega's
 * headless View (renderer 'none') renders the scenegraph to an SVG string. Text is measured by vega's
 * built-in estimate (no canvas package), so labels can be a few pixels off; nothing else is approximated.
 *
 * Two shapes cover the benchmarks: grouped bars (one metric per panel, e.g. QPS and p99 by peer) and lines
 * (e.g. per-worker utilisation over time). Anything else: build a vega-lite spec and call renderChart.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

export type { TopLevelSpec };

/** Renders a vega-lite spec to an SVG file (directories created); returns the file's path. */
export async function renderChart(spec: TopLevelSpec, file: string): Promise<string> {
  const { spec: vgSpec } = compile(spec);
  const view = new vega.View(vega.parse(vgSpec), { renderer: 'none' });
  try {
    const svg = await view.toSVG();
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, svg);
    return file;
  } finally {
    view.finalize();
  }
}

export interface BarRow {
  /** The bar's label on the x axis (e.g. the peer). */
  readonly category: string;
  /** The panel it belongs to (e.g. "QPS" or "p99 latency (us)"); each panel has its own y scale. */
  readonly metric: string;
  readonly value: number;
  /** Optional colour group (e.g. the test); defaults to the category. */
  readonly series?: string;
}

/**
 * Bars, one panel per metric side by side, each with its own y scale (QPS and microseconds do not share an
 * axis). Value labels sit on the bars so the chart reads without hovering.
 */
export function barChartSpec(
  title: string | { text: string; subtitle: string },
  rows: readonly BarRow[],
  opts: { panelWidth?: number; panelHeight?: number } = {},
): TopLevelSpec {
  const data = rows.map((r) => ({ ...r, series: r.series ?? r.category, label: formatValue(r.value) }));
  const metrics = [...new Set(rows.map((r) => r.metric))];
  // Bars side by side within a category only when there are series; otherwise one centred bar per category.
  const grouped = rows.some((r) => r.series !== undefined);
  const offset = grouped ? { xOffset: { field: 'series', type: 'nominal' } } : {};
  const width = opts.panelWidth ?? 220, height = opts.panelHeight ?? 220;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    data: { values: data },
    background: 'white',
    hconcat: metrics.map((metric) => ({
      title: metric,
      width,
      height,
      transform: [{ filter: { field: 'metric', equal: metric } }],
      encoding: {
        x: { field: 'category', type: 'nominal', title: null, sort: null, axis: { labelAngle: -20, labelLimit: 240 } },
        ...offset,
        y: { field: 'value', type: 'quantitative', title: metric },
      },
      layer: [
        // Without series the colour only tells categories apart, which the axis already names: no legend.
        { mark: { type: 'bar' }, encoding: { color: { field: 'series', type: 'nominal', title: null, ...(grouped ? {} : { legend: null }) } } },
        { mark: { type: 'text', dy: -6, fontSize: 10 }, encoding: { text: { field: 'label', type: 'nominal' } } },
      ],
    })),
    resolve: { scale: { y: 'independent' } },
  } as TopLevelSpec;
}

export interface LinePoint {
  /** x value, e.g. seconds since start. */
  readonly x: number;
  readonly y: number;
  /** One line per series, e.g. "worker 1". */
  readonly series: string;
}

/** Lines over a quantitative x, one per series (e.g. cpuUtil per worker over time). */
export function lineChartSpec(
  title: string | { text: string; subtitle: string },
  points: readonly LinePoint[],
  axes: { x: string; y: string; yDomain?: [number, number] },
  opts: { width?: number; height?: number } = {},
): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    background: 'white',
    width: opts.width ?? 480,
    height: opts.height ?? 240,
    data: { values: points.map((p) => ({ ...p })) },
    mark: { type: 'line', point: points.length <= 200 },
    encoding: {
      x: { field: 'x', type: 'quantitative', title: axes.x },
      y: { field: 'y', type: 'quantitative', title: axes.y, ...(axes.yDomain ? { scale: { domain: axes.yDomain } } : {}) },
      color: { field: 'series', type: 'nominal', title: null },
    },
  } as TopLevelSpec;
}

function formatValue(v: number): string {
  if (!Number.isFinite(v)) return '';
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US');
  if (Math.abs(v) >= 10) return v.toFixed(0);
  return v.toFixed(1);
}
