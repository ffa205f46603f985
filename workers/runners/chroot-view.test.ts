import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ChrootView } from './chroot-view.js';

let dir: string;
let root: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'remex-chroot-view-'));
  root = join(dir, 'chroot');
  for (const d of ['bin', 'usr/lib', 'var/log', 'var/tmp', 'tmp', 'dev', 'proc', 'etc']) {
    await mkdir(join(root, d), { recursive: true });
  }
  await chmod(join(root, 'var', 'tmp'), 0o1777);
  await writeFile(join(root, 'bin', 'tool'), '#!/bin/sh\n');
  await chmod(join(root, 'bin', 'tool'), 0o755);
  await writeFile(join(root, 'bin', 'data'), 'not a program');
  await symlink('/bin/tool', join(root, 'bin', 'abs'));
  await symlink('/usr/bin/env', join(root, 'bin', 'hostenv')); // the host has it, the chroot does not
  await symlink('../../../../../../usr/bin/env', join(root, 'bin', 'climb'));
  await symlink('usr/lib', join(root, 'lib'));
  await writeFile(join(root, 'etc', 'passwd'), '');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('ChrootView.mountArgs', () => {
  it('binds each top-level entry read-only, recreates symlinks, mounts fresh /dev /proc /tmp', async () => {
    const view = new ChrootView(root, '/tmp/remex-x/exec/a/root');
    expect(await view.mountArgs()).toEqual([
      ...['--ro-bind', join(root, 'bin'), '/bin'],
      ...['--ro-bind', join(root, 'etc'), '/etc'],
      ...['--symlink', 'usr/lib', '/lib'],
      ...['--ro-bind', join(root, 'usr'), '/usr'],
      ...['--ro-bind', join(root, 'var'), '/var'],
      ...['--dev', '/dev', '--proc', '/proc', '--tmpfs', '/tmp'],
      ...['--bind', '/tmp/remex-x/exec/a/root', '/tmp/remex-x/exec/a/root'],
      ...['--remount-ro', '/'],
    ]);
  });

  it('rebuilds the directories of the root on the way to the input root', async () => {
    const view = new ChrootView(root, '/var/tmp/worker/root');
    expect(await view.mountArgs()).toEqual([
      ...['--ro-bind', join(root, 'bin'), '/bin'],
      ...['--ro-bind', join(root, 'etc'), '/etc'],
      ...['--symlink', 'usr/lib', '/lib'],
      ...['--ro-bind', join(root, 'usr'), '/usr'],
      ...['--perms', '0755', '--dir', '/var'],
      ...['--ro-bind', join(root, 'var', 'log'), '/var/log'],
      ...['--perms', '1777', '--dir', '/var/tmp'],
      ...['--dev', '/dev', '--proc', '/proc', '--tmpfs', '/tmp'],
      ...['--bind', '/var/tmp/worker/root', '/var/tmp/worker/root'],
      ...['--remount-ro', '/'],
    ]);
  });

  it('leaves out whatever of the root stands where the input root goes', async () => {
    const view = new ChrootView(root, '/etc/passwd/root');
    const args = await view.mountArgs();
    expect(args).not.toContain('/etc/passwd');
    expect(args.slice(args.indexOf('/etc') - 3, args.indexOf('/etc') + 1)).toEqual([
      '--perms',
      '0755',
      '--dir',
      '/etc',
    ]);
  });
});

describe('ChrootView.findProgram', () => {
  const inputRoot = '/tmp/remex-x/root';

  it('looks bare names up in PATH inside the root, symlinks followed inside it', async () => {
    const view = new ChrootView(root, inputRoot);
    expect(await view.findProgram('tool', '/usr/bin:/bin', inputRoot)).toEqual({
      found: true,
      path: '/bin/tool',
    });
    expect(await view.findProgram('abs', '/bin', inputRoot)).toEqual({ found: true, path: '/bin/abs' });
    // A relative PATH entry is taken from the working directory; .. stops at /.
    expect(await view.findProgram('tool', '../../../bin', inputRoot)).toEqual({
      found: true,
      path: '/bin/tool',
    });
  });

  it("never reaches the host's files: absolute targets and .. stay inside the root", async () => {
    const view = new ChrootView(root, inputRoot);
    for (const name of ['hostenv', 'climb']) {
      expect(await view.findProgram(name, '/bin', inputRoot)).toMatchObject({ found: false, exitCode: 127 });
    }
    expect(await view.findProgram('env', '/usr/bin', inputRoot)).toEqual({
      found: false,
      exitCode: 127,
      reason: '"env" was not found in PATH "/usr/bin" in the chroot',
    });
    expect(await view.findProgram('tool', undefined, inputRoot)).toEqual({ found: true, path: '/bin/tool' });
    expect(await view.findProgram('nope', undefined, inputRoot)).toMatchObject({
      reason: expect.stringContaining('the Command sets no PATH') as unknown,
    });
  });

  it('resolves a path with a slash against the working directory, reporting 127 / 126', async () => {
    const input = join(dir, 'input');
    await mkdir(join(input, 'sub'), { recursive: true });
    await writeFile(join(input, 'sub', 'run.sh'), '#!/bin/sh\n');
    await chmod(join(input, 'sub', 'run.sh'), 0o755);
    await writeFile(join(input, 'sub', 'plain.txt'), '');
    await symlink('/bin/tool', join(input, 'to-root-tool'));
    const view = new ChrootView(root, input);
    const cwd = join(input, 'sub');
    expect(await view.findProgram('./run.sh', '/bin', cwd)).toEqual({
      found: true,
      path: join(cwd, 'run.sh'),
    });
    expect(await view.findProgram('../to-root-tool', '/bin', cwd)).toEqual({
      found: true,
      path: join(input, 'to-root-tool'),
    });
    expect(await view.findProgram('/bin/data', '/bin', cwd)).toEqual({
      found: false,
      exitCode: 126,
      reason: '"/bin/data": EACCES: permission denied',
    });
    expect(await view.findProgram('./missing', '/bin', cwd)).toEqual({
      found: false,
      exitCode: 127,
      reason: `${JSON.stringify(join(cwd, 'missing'))}: ENOENT: no such file or directory`,
    });
  });
});
