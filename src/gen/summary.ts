/** Human-readable summaries of generator results, for the CLI. */
import type { FindMaxResult, GenResult, TrialRecord } from './run.js';

function fmtInt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

function fmtPct(p: number | null): string {
  return p === null ? 'n/a' : `${p < 0.01 && p > 0 ? p.toExponential(1) : p.toFixed(3)}%`;
}

export function formatGenResult(r: GenResult): string {
  const lines: string[] = [];
  lines.push(
    `flowlb gen -> ${r.target}: ${fmtInt(r.flows)} flows (${r.distribution}${r.rtp ? ', RTP' : ''}), ${r.datagramBytes} B datagrams, ` +
      `${r.procs} process${r.procs > 1 ? 'es' : ''}, ${r.srcAddrs} source address${r.srcAddrs > 1 ? 'es' : ''}`,
  );
  lines.push(
    `  rate      offered ${fmtInt(r.offeredRate)} pps, achieved ${fmtInt(r.achievedRate)} pps over ${(r.durationMs / 1000).toFixed(3)} s ` +
      `(stopped by ${r.stoppedBy}; max schedule lag ${r.scheduleLagMaxMs.toFixed(1)} ms)`,
  );
  if (r.generatorBound) {
    lines.push('  WARNING   the generator did not keep up with the offered rate: these numbers are its limit, not the target\'s (try --procs or a lower --rate)');
  }
  if (r.expectReplies) {
    lines.push(
      `  packets   sent ${fmtInt(r.sent)}, received ${fmtInt(r.received)}, lost ${fmtInt(r.lost ?? 0)} (${fmtPct(r.lossPct)}), ` +
        `reordered ${fmtInt(r.reordered)}, duplicated ${fmtInt(r.duplicated)}, invalid ${fmtInt(r.invalid)}, socket errors ${fmtInt(r.sendErrors)}`,
    );
    lines.push(`  per flow  sent ${fmtInt(r.perFlowSent.min)}..${fmtInt(r.perFlowSent.max)}, received ${fmtInt(r.perFlowReceived.min)}..${fmtInt(r.perFlowReceived.max)}; drain ${fmtInt(r.drainMs)} ms`);
    if (r.rtt) {
      lines.push(`  rtt (us)  p50 ${r.rtt.p50}  p90 ${r.rtt.p90}  p99 ${r.rtt.p99}  p99.9 ${r.rtt.p999}  max ${r.rtt.max}  (min ${r.rtt.min}, mean ${r.rtt.mean})`);
    } else {
      lines.push('  rtt (us)  no replies');
    }
    const names = Object.keys(r.backends).sort();
    if (names.length > 0) {
      lines.push(`  backends  ${names.map((n) => `${n}=${fmtInt(r.backends[n]!)}`).join('  ')}; flows on several backends: ${fmtInt(r.flowsOnSeveralBackends)}`);
    }
  } else {
    lines.push(`  packets   sent ${fmtInt(r.sent)} (replies not expected), socket errors ${fmtInt(r.sendErrors)}`);
  }
  return lines.join('\n');
}

export function formatTrial(t: TrialRecord): string {
  return (
    `  trial ${fmtInt(t.ratePps).padStart(9)} pps: achieved ${fmtInt(t.achievedRate).padStart(9)}, loss ${fmtPct(t.lossPct).padStart(8)}, ` +
    `p99 ${t.rttP99Us ?? '-'} us -> ${t.passed ? 'pass' : `fail (${t.failedOn})`}`
  );
}

export function formatFindMax(f: FindMaxResult, lossPct: number): string {
  return `max rate at <= ${lossPct}% loss: ${fmtInt(f.rate)} pps (${f.trials.length} trials, bounded by ${f.limitedBy})`;
}
