import { pino, type Logger } from 'pino';

/** The process logger: JSON lines on stderr, level from REMEX_LOG_LEVEL (default info). */
export const log: Logger = pino(
  { level: process.env.REMEX_LOG_LEVEL ?? 'info', base: { svc: 'remex' } },
  pino.destination(2),
);
