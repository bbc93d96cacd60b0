/**
 * The CPU limit of this process's cgroup (CFS bandwidth control), in cores: quota / period, the smallest along
 * the path from the process's cgroup up to the mount point; 0 when there is none (or it cannot be read).
 *
 * Why the balancer wants it: a worker under a CFS quota smaller than a core cannot give more than the quota, but
 * its cpu/elu says so only while it is saturated. Below that, each report reads anywhere between the quota (a
 * report that was throttled) and 1 (one that was not): 4 workers capped at a quarter core each read 0.25..1
 * from report to report, and the balancer moved buckets after that noise (117-217 moves per 20 s). With the
 * quota known, the index is never above it (see effectiveCapacity).
 *
 * cgroup v1 (`cpu.cfs_quota_us`, -1 = none, and `cpu.cfs_period_us`) and v2 (`cpu.max`: "max 100000" or
 * "25000 100000"). A process moved into another cgroup while it runs (a benchmark caps a worker after it
 * started, an operator moves it) is followed: /proc/self/cgroup is read again at every `read()`. Control plane
 * only (a worker reads it once per load report), never per packet.
 */
import fs from 'node:fs';
import path from 'node:path';

export interface CpuMount {
  readonly version: 1 | 2;
  /** The cgroup path that is the root of this mount (the part of /proc/self/cgroup's path it hides). */
  readonly root: string;
  readonly mountPoint: string;
}

/** Unescapes the octal escapes of /proc/self/mountinfo (a space is `\040`). */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/**
 * The cgroup mounts that can carry a CPU limit, from /proc/self/mountinfo: v1 hierarchies with the `cpu`
 * controller, and v2 mounts. v1 first: on a hybrid machine the v2 mount usually has no cpu controller.
 */
export function parseCpuMounts(mountinfo: string): CpuMount[] {
  const v1: CpuMount[] = [], v2: CpuMount[] = [];
  for (const line of mountinfo.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' '), right = line.slice(sep + 3).split(' ');
    if (left.length < 5 || right.length < 1) continue;
    const root = unescapeMount(left[3]!), mountPoint = unescapeMount(left[4]!);
    if (right[0] === 'cgroup' && (right[2] ?? '').split(',').includes('cpu')) v1.push({ version: 1, root, mountPoint });
    else if (right[0] === 'cgroup2') v2.push({ version: 2, root, mountPoint });
  }
  return [...v1, ...v2];
}

/**
 * The process's cgroup path for a hierarchy, from /proc/self/cgroup: v1, the line whose controller list has
 * `cpu` ("4:cpu,cpuacct:/a/b"); v2, the line "0::/a/b". null if there is none.
 */
export function cgroupPathOf(procCgroup: string, version: 1 | 2): string | null {
  for (const line of procCgroup.split('\n')) {
    const a = line.indexOf(':'), b = line.indexOf(':', a + 1);
    if (a < 0 || b < 0) continue;
    const id = line.slice(0, a), controllers = line.slice(a + 1, b), p = line.slice(b + 1);
    if (version === 2 ? id === '0' && controllers === '' : controllers.split(',').includes('cpu')) return p;
  }
  return null;
}

function trimSlash(p: string): string {
  return p.length > 1 ? p.replace(/\/+$/, '') || '/' : p;
}

/** The directories to read, leaf first, up to and including the mount point. */
export function cgroupDirs(mount: CpuMount, cgroupPath: string): string[] {
  const rootPrefix = mount.root === '/' ? '' : mount.root;
  // A path outside the mount's root (another cgroup namespace) shows as the mount itself.
  const rel = rootPrefix && !(cgroupPath === rootPrefix || cgroupPath.startsWith(rootPrefix + '/')) ? '' : cgroupPath.slice(rootPrefix.length);
  const dirs: string[] = [];
  const top = trimSlash(path.normalize(mount.mountPoint));
  let dir = trimSlash(path.join(top, rel));
  for (;;) {
    dirs.push(dir);
    if (dir === top || !dir.startsWith(top + '/')) break;
    dir = path.dirname(dir);
  }
  return dirs;
}

/** Cores from a v2 `cpu.max` ("max 100000", "25000 100000"); 0 = no limit or unreadable. */
export function parseCpuMax(text: string): number {
  const [q, p] = text.trim().split(/\s+/);
  const quota = Number(q), period = Number(p ?? 100000);
  return Number.isFinite(quota) && quota > 0 && Number.isFinite(period) && period > 0 ? quota / period : 0;
}

/** Cores from v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`; 0 = no limit (-1) or unreadable. */
export function parseCfsQuota(quotaText: string, periodText: string): number {
  const quota = Number(quotaText.trim()), period = Number(periodText.trim());
  return Number.isFinite(quota) && quota > 0 && Number.isFinite(period) && period > 0 ? quota / period : 0;
}

/** A file's text, or null when it is not there (or not ours to read); other errors (EMFILE) throw. */
function readOr(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EACCES' || code === 'EPERM' || code === 'EINVAL') return null;
    throw err;
  }
}

export class CpuLimitReader {
  private readonly mounts: CpuMount[];
  private last = 0;

  constructor(private readonly procDir = '/proc/self') {
    let info = '';
    try { info = readOr(path.join(procDir, 'mountinfo')) ?? ''; } catch { /* no descriptor to spare: no limit known */ }
    this.mounts = parseCpuMounts(info);
  }

  /**
   * Cores this process may use by its cgroups' CPU quotas (the smallest along the path), 0 if unlimited. A read
   * that fails for want of a descriptor (a proxy holding a socket per flow hits EMFILE) keeps the last value: a
   * ceiling that came and went with the descriptor count would make the index jump.
   */
  read(): number {
    try { return (this.last = this.readNow()); } catch { return this.last; }
  }

  private readNow(): number {
    if (this.mounts.length === 0) return 0;
    const procCgroup = readOr(path.join(this.procDir, 'cgroup'));
    if (procCgroup === null) return 0;
    for (const m of this.mounts) {
      const p = cgroupPathOf(procCgroup, m.version);
      if (p === null) continue;
      let least = 0, readable = false;
      for (const dir of cgroupDirs(m, p)) {
        let cores = 0;
        if (m.version === 2) {
          const t = readOr(path.join(dir, 'cpu.max'));
          if (t === null) continue;
          readable = true; cores = parseCpuMax(t);
        } else {
          const q = readOr(path.join(dir, 'cpu.cfs_quota_us')), per = readOr(path.join(dir, 'cpu.cfs_period_us'));
          if (q === null || per === null) continue;
          readable = true; cores = parseCfsQuota(q, per);
        }
        if (cores > 0 && (least === 0 || cores < least)) least = cores;
      }
      // The first hierarchy whose files exist decides (a v2 mount without the cpu controller has no cpu.max).
      if (readable) return least;
    }
    return 0;
  }
}
