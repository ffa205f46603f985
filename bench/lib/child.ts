import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The repository root: children run from it so `--import tsx` resolves. */
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BENCH = new URL('../', import.meta.url);

/**
 * A bench helper running as its own process (`node --import tsx bench/<script>`), talking
 * back through one JSON object per stdout line.
 */
export class JsonChild {
  readonly process: ChildProcess;
  private readonly lines: string[] = [];
  private readonly waiters: { resolve: (line: string) => void; reject: (err: Error) => void }[] = [];
  private stderr = '';
  private failure: Error | undefined;
  private readonly exited: Promise<number | null>;

  /** `script` is a path under bench/, e.g. "tcp-peer.ts". */
  constructor(script: string, args: string[]) {
    const file = fileURLToPath(new URL(script, BENCH));
    this.process = spawn(process.execPath, ['--import', 'tsx', file, ...args], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.process.stderr!.on('data', (c: Buffer) => (this.stderr += c.toString()));
    createInterface({ input: this.process.stdout! }).on('line', (line) => {
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve(line);
      else this.lines.push(line);
    });
    // 'close' comes after stdout is drained, so every line has been delivered by then.
    this.exited = new Promise((resolve) => this.process.once('close', (code) => resolve(code)));
    void this.exited.then((code) => {
      this.failure = new Error(
        code === 0 ? `${script} exited without answering` : `${script} exited with ${code}:\n${this.stderr}`,
      );
      for (const w of this.waiters.splice(0)) w.reject(this.failure);
    });
  }

  /** The next JSON message the child printed. */
  async next<T>(): Promise<T> {
    const line =
      this.lines.shift() ??
      (await new Promise<string>((resolve, reject) => {
        if (this.failure) return reject(this.failure);
        this.waiters.push({ resolve, reject });
      }));
    return JSON.parse(line) as T;
  }

  /** Waits for the child to exit, failing unless it exited with 0. */
  async done(): Promise<void> {
    const code = await this.exited;
    if (code !== 0) throw new Error(`child exited with ${code}:\n${this.stderr}`);
  }

  kill(): void {
    if (this.process.exitCode === null) this.process.kill('SIGKILL');
  }
}
