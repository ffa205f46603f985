import Docker from 'dockerode';
import { mkdtemp, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { extract } from 'tar';
import { digestString, type Digest } from '../common/digest.js';
import { Code, RemexError } from '../common/status.js';
import { ConfigError } from '../common/config-error.js';
import { CasClient } from '../remote/cas-client.js';
import { uploadDirectory } from '../remote/directory-upload.js';
import { removeTree } from '../remote/remove-tree.js';

export const CHROOT_USAGE = `usage: remex chroot upload DIR [options]
       remex chroot from-image IMAGE [options]

Makes a root file system for the userchroot runner: uploads it to the CAS as a Directory
tree and prints its digest, "hash/size", on stdout. Pass that as the platform property
chrootRootDigest (with runner=userchroot) of the actions to run inside it.

  upload DIR         a directory on this machine (files, directories and symlinks;
                     only the executable bit of a file's mode is kept)
  from-image IMAGE   the file system of a Docker image the engine already has (reached
                     through DOCKER_HOST, else /var/run/docker.sock); a container is
                     created from it, exported and removed, never started

options:
  --server ADDR      remex server (default 127.0.0.1:50051)
  --instance NAME    instance name (default "")
`;

/** `remex chroot upload|from-image`: prints the root digest on `out` (stdout). */
export async function runChrootCommand(
  args: string[],
  out: NodeJS.WritableStream = process.stdout,
): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      server: { type: 'string', default: '127.0.0.1:50051' },
      instance: { type: 'string', default: '' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    out.write(CHROOT_USAGE);
    return;
  }
  const [sub, target, ...extra] = positionals;
  if (sub !== 'upload' && sub !== 'from-image') {
    throw new ConfigError(
      `${sub === undefined ? 'no subcommand given' : `unknown subcommand ${JSON.stringify(sub)}`}\n\n${CHROOT_USAGE}`,
    );
  }
  if (target === undefined || extra.length > 0) {
    throw new ConfigError(
      `remex chroot ${sub} takes exactly one ${sub === 'upload' ? 'DIR' : 'IMAGE'}\n\n${CHROOT_USAGE}`,
    );
  }
  const cas = CasClient.connect(values.server, { instanceName: values.instance });
  try {
    const digest = sub === 'upload' ? await uploadRoot(cas, target) : await uploadImage(cas, target);
    out.write(`${digestString(digest)}\n`);
  } finally {
    cas.close();
  }
}

async function uploadRoot(cas: CasClient, dir: string): Promise<Digest> {
  const path = resolve(dir);
  const info = await stat(path).catch(() => undefined);
  if (!info?.isDirectory()) throw new ConfigError(`${dir} is not a directory`);
  return uploadDirectory(cas, path);
}

/**
 * Exports the file system of `image` through the engine API (create a container, never
 * started; export it as a tar stream), unpacks it into a temporary directory and uploads
 * that. The container and the directory are removed whatever happens. Device nodes and
 * fifos in the export are skipped (the CAS holds files, directories and symlinks), and so
 * is the engine's /.dockerenv marker.
 */
async function uploadImage(cas: CasClient, image: string): Promise<Digest> {
  const docker = new Docker();
  let container: Docker.Container;
  try {
    container = await docker.createContainer({
      Image: image,
      // Never run; an image without CMD or ENTRYPOINT still needs one to be created.
      Cmd: ['/bin/true'],
      NetworkDisabled: true,
      Labels: { 'build.remex.purpose': 'chroot-export' },
    });
  } catch (err) {
    throw engineError(err, `creating a container from image ${JSON.stringify(image)}`, image);
  }
  const dir = await mkdtemp(join(tmpdir(), 'remex-chroot-'));
  try {
    process.stderr.write(`remex: exporting the file system of ${image}\n`);
    let exported: NodeJS.ReadableStream;
    try {
      exported = await container.export();
    } catch (err) {
      throw engineError(err, `exporting a container of ${JSON.stringify(image)}`, image);
    }
    await pipeline(
      exported,
      extract({
        cwd: dir,
        filter: (path) => path.replace(/^(\.\/)+/, '') !== '.dockerenv',
      }),
    );
    process.stderr.write(`remex: uploading the file system of ${image}\n`);
    return await uploadDirectory(cas, dir);
  } finally {
    await container.remove({ force: true, v: true }).catch((err: unknown) => {
      process.stderr.write(`remex: could not remove container ${container.id}: ${(err as Error).message}\n`);
    });
    await removeTree(dir);
  }
}

/** An engine failure as a status with a message saying what to do. */
function engineError(err: unknown, doing: string, image: string): RemexError {
  const e = err as { statusCode?: number; code?: string; message?: string; json?: { message?: string } };
  const detail = e.json?.message ?? e.message ?? String(err);
  if (e.statusCode === 404) {
    return new RemexError(
      Code.NOT_FOUND,
      `the Docker engine has no image ${JSON.stringify(image)} (${detail}): pull or build it first`,
      { cause: err },
    );
  }
  if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED' || e.code === 'EACCES') {
    const where = process.env.DOCKER_HOST ?? 'unix:///var/run/docker.sock';
    return new RemexError(Code.UNAVAILABLE, `no Docker engine answers at ${where} (${detail})`, {
      cause: err,
    });
  }
  return new RemexError(Code.UNKNOWN, `${doing}: ${detail}`, { cause: err });
}
