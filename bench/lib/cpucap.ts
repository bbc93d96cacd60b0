/**
 * Caps a process's CPU with a cgroup (CFS bandwidth control): `cores` of CPU time per period, e.g. 0.5 = at
 * most half a core, throttled for the rest of every period. The balancing benchmarks use it to give each
 * worker a "core" of its own that is smaller than a real one, so that on a 2-core machine a worker can be
 * the bottleneck while the machine still has room for the primary and the load client (as it has on a
 * machine with a core per worker plus spare ones).
 *
 * cgroup v1 (`/sys/fs/cgroup/cpu`, cpu.cfs_quota_us / cpu.cfs_period_us) or v2 (a cgroup2 mount with the
 * cpu controller, cpu.max). Needs root. `createCpuCap` returns null, with the reason, when neither works.
 */
import fs from 'node:fs';
import path from 'node:path';

export interface CpuCap {
  readonly kind: 'cgroup-v1' | 'cgroup-v2';
  readonly dir: string;
  /** Moves the process (every thread) into the capped cgroup. */
  apply(pid: number): void;
  /** Moves whatever is left back to the parent and removes the cgroup. */
  release(): void;
}

function v2Root(): string | null {
  for (const root of ['/sys/fs/cgroup', '/sys/fs/cgroup/unified']) {
    try {
      if (fs.readFileSync(path.join(root, 'cgroup.controllers'), 'utf8').split(/\s+/).includes('cpu')) return root;
    } catch { /* not a v2 root */ }
  }
  return null;
}

export function createCpuCap(name: string, cores: number, periodUs = 10_000): CpuCap | { error: string } {
  if (!(cores > 0)) return { error: `cores must be > 0, got ${cores}` };
  const quota = Math.max(1000, Math.round(cores * periodUs));
  const attempts: string[] = [];
  const v1 = '/sys/fs/cgroup/cpu';
  if (fs.existsSync(path.join(v1, 'cpu.cfs_quota_us'))) {
    const dir = path.join(v1, name);
    try {
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'cpu.cfs_period_us'), String(periodUs));
      fs.writeFileSync(path.join(dir, 'cpu.cfs_quota_us'), String(quota));
      return handle('cgroup-v1', dir, v1);
    } catch (err) { attempts.push(`cgroup v1: ${(err as Error).message}`); }
  }
  const root = v2Root();
  if (root) {
    const dir = path.join(root, name);
    try {
      try { fs.writeFileSync(path.join(root, 'cgroup.subtree_control'), '+cpu'); } catch { /* already enabled */ }
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'cpu.max'), `${quota} ${periodUs}`);
      return handle('cgroup-v2', dir, root);
    } catch (err) { attempts.push(`cgroup v2: ${(err as Error).message}`); }
  }
  return { error: attempts.length ? attempts.join('; ') : 'no cgroup cpu controller (v1 cpu or v2 with cpu) on this machine' };
}

function handle(kind: CpuCap['kind'], dir: string, parent: string): CpuCap {
  return {
    kind, dir,
    apply(pid: number): void { fs.writeFileSync(path.join(dir, 'cgroup.procs'), String(pid)); },
    release(): void {
      try {
        for (const pid of fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) {
          try { fs.writeFileSync(path.join(parent, 'cgroup.procs'), pid); } catch { /* exited */ }
        }
        fs.rmdirSync(dir);
      } catch { /* already gone */ }
    },
  };
}
