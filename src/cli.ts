import { parseArgs } from 'node:util';
import { ConfigError } from './common/config-error.js';
import { ROLES, loadConfig, type Role } from './config/config.js';
import { RemexError } from './common/status.js';
import { startServer } from './app/start-server.js';
import { log } from './common/log.js';
import { runWorkerCommand } from '../workers/bot/cli.js';
import { runExecuteCommand } from './client/execute-command.js';
import { runChrootCommand } from './client/chroot-command.js';

// The AWS SDK prints a notice to stderr, outside the structured log, that its releases
// after January 2027 need Node.js 22; the pinned version works on Node.js 20 (README).
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const USAGE = `usage: remex <command> [options]

commands:
  serve     run the server (default: every service, embedded disk storage)
            --config FILE     YAML config (see config/remex.reference.yaml)
            --listen ADDR     host:port to listen on (default 127.0.0.1:50051)
            --data-dir DIR    base directory for storage (default ~/.cache/remex)
            --workers N       local workers to run inside the server (default: CPU count)
            --services LIST   roles to serve, comma-separated: execution,cas,actioncache
                              (default: all; Capabilities and health are always served)
  execute   run one command remotely (remex execute --help)
  chroot    make a root file system for the userchroot runner (remex chroot --help)
  worker    run a worker that takes actions from a remex server (remex worker --help)
  help      show this text
`;

async function serve(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: 'string' },
      listen: { type: 'string' },
      'data-dir': { type: 'string' },
      workers: { type: 'string' },
      services: { type: 'string' },
    },
    strict: true,
  });
  const config = await loadConfig(values.config);
  if (values.services !== undefined) {
    const roles = values.services.split(',').map((r) => r.trim());
    const unknown = roles.filter((r) => !(ROLES as readonly string[]).includes(r));
    if (roles.length === 0 || unknown.length > 0)
      throw new ConfigError(
        `--services ${values.services}: unknown role ${unknown.join(', ') || '(none)'}; choose from ${ROLES.join(', ')}`,
      );
    config.services = [...new Set(roles as Role[])];
  }
  if (values.listen) config.listen = values.listen;
  if (values['data-dir']) config.dataDir = values['data-dir'];
  if (values.workers !== undefined) {
    const count = Number(values.workers);
    if (!Number.isInteger(count) || count < 0)
      throw new ConfigError(`--workers ${values.workers}: expected a whole number >= 0`);
    config.workers.count = count;
  }
  const server = await startServer(config);
  // Machine-readable line for scripts and tests that start remex on port 0.
  process.stdout.write(`remex listening on ${server.address}\n`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'shutting down');
    server.close().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'serve':
      return serve(rest);
    case 'worker':
      return runWorkerCommand(rest);
    case 'chroot':
      return runChrootCommand(rest);
    case 'execute':
      process.exitCode = await runExecuteCommand(rest);
      return;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return;
    default:
      process.stderr.write(`remex: unknown command "${command}"\n\n${USAGE}`);
      process.exit(2);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const isStatus =
    err instanceof RemexError ||
    (err instanceof Error && typeof (err as { details?: unknown }).details === 'string');
  if (
    isStatus ||
    err instanceof ConfigError ||
    (err instanceof TypeError && (err as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS'))
  ) {
    // Statuses from the server or remex, bad flags and bad config: the message says it all.
    process.stderr.write(`remex: ${err.message}\n`);
  } else {
    process.stderr.write(`remex: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  }
  process.exit(1);
});
