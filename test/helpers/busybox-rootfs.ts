import { execFile } from 'node:child_process';
import { access, chmod, copyFile, mkdir, mkdtemp, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { runChrootCommand } from '../../src/client/chroot-command.js';

const BIN = fileURLToPath(new URL('../../bin/remex.js', import.meta.url));

/** Debian's busybox-static: one statically linked binary, so it runs in any root. */
export const BUSYBOX = '/bin/busybox';

/** Applets the tests rely on; every other applet the binary has is linked too. */
const REQUIRED_APPLETS = [
  'sh',
  'echo',
  'cat',
  'ls',
  'mkdir',
  'sleep',
  'chmod',
  'touch',
  'id',
  'env',
  'true',
  'false',
  'pwd',
  'kill',
  'nc',
];

/**
 * Builds a minimal root filesystem from Debian's busybox-static (package
 * `busybox-static`) in a fresh directory under `parent` (default: the system temporary
 * directory): `bin/busybox` with a relative symlink per applet in `bin/` and `usr/bin/`,
 * `etc/passwd` and `etc/group` for root and nobody, and empty `tmp/`, `dev/`, `proc/`.
 * Returns the directory. Fails, naming the package, when busybox-static is not installed.
 */
export async function makeBusyboxRootfs(parent: string = tmpdir()): Promise<string> {
  try {
    await access(BUSYBOX);
  } catch {
    throw new Error(
      `${BUSYBOX} is missing: install Debian's busybox-static (apt-get install busybox-static)`,
    );
  }
  const { stdout } = await promisify(execFile)(BUSYBOX, ['--list']);
  const applets = new Set([...stdout.split('\n').filter((a) => /^[\w.[-]+$/.test(a)), ...REQUIRED_APPLETS]);
  applets.delete('busybox');

  const root = await mkdtemp(join(parent, 'remex-busybox-root-'));
  for (const dir of ['bin', 'usr/bin', 'etc', 'tmp', 'dev', 'proc', 'root']) {
    await mkdir(join(root, dir), { recursive: true });
  }
  await chmod(join(root, 'tmp'), 0o1777);
  await copyFile(BUSYBOX, join(root, 'bin', 'busybox'));
  await chmod(join(root, 'bin', 'busybox'), 0o755);
  for (const applet of applets) {
    await symlink('busybox', join(root, 'bin', applet));
    await symlink('../../bin/busybox', join(root, 'usr', 'bin', applet));
  }
  await writeFile(
    join(root, 'etc', 'passwd'),
    'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
  );
  await writeFile(join(root, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
  return root;
}

/** What `remex chroot upload|from-image` printed and left on stderr. */
export interface ChrootCliResult {
  /** The digest line, "hash/size", as printed. */
  digest: string;
  stderr: string;
  /** Whether the built CLI ran it (false: runChrootCommand in-process; see below). */
  viaCli: boolean;
}

/**
 * Runs `remex chroot ARGS... --server ADDRESS` with the built CLI (bin/remex.js, as a user
 * runs it) and returns the digest it printed. Until src/cli.ts dispatches `chroot`, the
 * CLI answers `unknown command "chroot"`: then (and only then) the same arguments go to
 * runChrootCommand in this process, and `viaCli` says so.
 */
export async function remexChroot(args: string[], address: string): Promise<ChrootCliResult> {
  const full = ['chroot', ...args, '--server', address];
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [BIN, ...full], {
      maxBuffer: 16 << 20,
    });
    return { digest: stdout.trim(), stderr, viaCli: true };
  } catch (err) {
    const stderr = String((err as { stderr?: string }).stderr ?? '');
    if (!stderr.includes('unknown command "chroot"')) {
      throw new Error(`remex ${full.join(' ')} failed: ${stderr || (err as Error).message}`, {
        cause: err,
      });
    }
  }
  const out = new PassThrough();
  let printed = '';
  out.on('data', (c: Buffer) => (printed += c.toString()));
  await runChrootCommand([...args, '--server', address], out);
  return { digest: printed.trim(), stderr: '', viaCli: false };
}
