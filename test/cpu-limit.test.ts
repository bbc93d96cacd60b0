import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  cgroupDirs, cgroupPathOf, CpuLimitReader, parseCfsQuota, parseCpuMax, parseCpuMounts,
} from '../src/control/cpu-limit.js';

// /proc/self/mountinfo of a hybrid machine (this one: v1 cpu hierarchy, v2 without controllers) and of a v2 container.
const HYBRID = [
  '31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755',
  '32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu',
  '33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct',
  '41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw',
].join('\n');
const DOCKER_V1 = '1200 1190 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct';
const V2 = '30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate';

describe('cgroup CPU limit: parsing', () => {
  it('finds v1 cpu hierarchies before v2 mounts, with their roots (optional fields and escapes too)', () => {
    expect(parseCpuMounts(HYBRID)).toEqual([
      { version: 1, root: '/', mountPoint: '/sys/fs/cgroup/cpu' },
      { version: 2, root: '/', mountPoint: '/sys/fs/cgroup/unified' },
    ]);
    expect(parseCpuMounts(DOCKER_V1)).toEqual([{ version: 1, root: '/docker/abc', mountPoint: '/sys/fs/cgroup/cpu,cpuacct' }]);
    expect(parseCpuMounts(V2)).toEqual([{ version: 2, root: '/', mountPoint: '/sys/fs/cgroup' }]);
    expect(parseCpuMounts('7 1 0:5 / /mnt/my\\040cg rw - cgroup2 none rw')).toEqual([{ version: 2, root: '/', mountPoint: '/mnt/my cg' }]);
    expect(parseCpuMounts('garbage\n\n1 2 3')).toEqual([]);
  });

  it('reads the cgroup path of the cpu controller (v1) or the unified line (v2)', () => {
    const text = '9:name=systemd:/\n4:cpu,cpuacct:/a/b\n1:cpuset:/x\n0::/u/v\n';
    expect(cgroupPathOf(text, 1)).toBe('/a/b');
    expect(cgroupPathOf(text, 2)).toBe('/u/v');
    expect(cgroupPathOf('2:cpuacct:/z\n', 1)).toBeNull();
    expect(cgroupPathOf('', 2)).toBeNull();
  });

  it('walks from the leaf up to the mount point, the mount root stripped', () => {
    expect(cgroupDirs({ version: 2, root: '/', mountPoint: '/m' }, '/a/b')).toEqual(['/m/a/b', '/m/a', '/m']);
    expect(cgroupDirs({ version: 2, root: '/', mountPoint: '/m' }, '/')).toEqual(['/m']);
    expect(cgroupDirs({ version: 1, root: '/docker/abc', mountPoint: '/m' }, '/docker/abc/w')).toEqual(['/m/w', '/m']);
    // A path outside the mount's root (another namespace): the mount itself only.
    expect(cgroupDirs({ version: 1, root: '/docker/abc', mountPoint: '/m' }, '/other')).toEqual(['/m']);
    expect(cgroupDirs({ version: 1, root: '/docker/abc', mountPoint: '/m' }, '/docker/abcd')).toEqual(['/m']);
  });

  it('turns quota and period into cores; none, garbage or a non-positive figure is 0', () => {
    expect(parseCpuMax('25000 100000\n')).toBe(0.25);
    expect(parseCpuMax('max 100000')).toBe(0);
    expect(parseCpuMax('150000 100000')).toBe(1.5);
    expect(parseCpuMax('')).toBe(0);
    expect(parseCfsQuota('2500\n', '10000\n')).toBe(0.25);
    expect(parseCfsQuota('-1', '100000')).toBe(0);
    expect(parseCfsQuota('5000', '0')).toBe(0);
  });
});

describe('cgroup CPU limit: CpuLimitReader on a cgroup tree', () => {
  const dirs: string[] = [];
  afterEach(() => { for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true }); });

  /** A fake /proc/self (mountinfo, cgroup) and cgroup mount under a temporary directory. */
  function tree(version: 1 | 2, cgroupPath: string, files: Record<string, string>): { proc: string; mnt: string } {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'flowlb-cg-'));
    dirs.push(root);
    const proc = path.join(root, 'proc'), mnt = path.join(root, 'mnt');
    fs.mkdirSync(proc);
    fs.writeFileSync(path.join(proc, 'mountinfo'), version === 1
      ? `32 31 0:29 / ${mnt} rw,relatime - cgroup cgroup rw,cpu\n`
      : `30 23 0:26 / ${mnt} rw shared:4 - cgroup2 cgroup2 rw\n`);
    fs.writeFileSync(path.join(proc, 'cgroup'), version === 1 ? `2:cpu:${cgroupPath}\n0::/\n` : `0::${cgroupPath}\n`);
    for (const [rel, text] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(mnt, rel)), { recursive: true });
      fs.writeFileSync(path.join(mnt, rel), text);
    }
    return { proc, mnt };
  }

  it('v2: the smallest quota along the path; none is 0', () => {
    const { proc } = tree(2, '/a/b', { 'cpu.max': 'max 100000\n', 'a/cpu.max': '50000 100000\n', 'a/b/cpu.max': '80000 100000\n' });
    expect(new CpuLimitReader(proc).read()).toBe(0.5);
    const none = tree(2, '/a', { 'cpu.max': 'max 100000\n', 'a/cpu.max': 'max 100000\n' });
    expect(new CpuLimitReader(none.proc).read()).toBe(0);
  });

  it('v1: quota over period; follows the process into another cgroup', () => {
    const { proc, mnt } = tree(1, '/', { 'cpu.cfs_quota_us': '-1\n', 'cpu.cfs_period_us': '100000\n', 'w0/cpu.cfs_quota_us': '1000\n', 'w0/cpu.cfs_period_us': '4000\n' });
    const reader = new CpuLimitReader(proc);
    expect(reader.read()).toBe(0);
    fs.writeFileSync(path.join(proc, 'cgroup'), '2:cpu:/w0\n');
    expect(reader.read()).toBe(0.25);
    fs.writeFileSync(path.join(mnt, 'w0/cpu.cfs_quota_us'), '-1\n');
    expect(reader.read()).toBe(0);
  });

  it('keeps the last value when a read fails for another reason than a missing file (EMFILE)', () => {
    const { proc, mnt } = tree(2, '/a', { 'a/cpu.max': '25000 100000\n' });
    const reader = new CpuLimitReader(proc);
    expect(reader.read()).toBe(0.25);
    // A directory where the file should be: EISDIR, as an error other than "not there" stands in for EMFILE.
    fs.rmSync(path.join(mnt, 'a/cpu.max'));
    fs.mkdirSync(path.join(mnt, 'a/cpu.max'));
    expect(reader.read()).toBe(0.25);
    fs.rmSync(path.join(mnt, 'a/cpu.max'), { recursive: true });
    expect(reader.read()).toBe(0);
  });

  it('no cgroup mount, no /proc files, a v2 mount without the cpu controller: 0, no throw', () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'flowlb-cg-'));
    dirs.push(empty);
    expect(new CpuLimitReader(empty).read()).toBe(0);
    const { proc } = tree(2, '/a', { 'a/cgroup.procs': '' });
    expect(new CpuLimitReader(proc).read()).toBe(0);
  });
});
