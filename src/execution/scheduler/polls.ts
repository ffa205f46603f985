/**
 * The long polls (UpdateBotSession calls) held in this process. A poll holds no state of
 * its own: the store is the source of truth, and a poke only makes the poll look again.
 * Pokes come from store events (new work on the queue, a change to the session), from
 * its timer, its AbortSignal and close().
 */
export class Poll {
  /** Counts pokes, so a poke between a look and the wait is not lost. */
  pokes = 0;
  /** True while the bot has no lease, so new work on the queue is worth a look. */
  wantsWork = false;
  private resolve?: () => void;

  constructor(
    readonly session: string,
    readonly instance: string,
  ) {}

  poke(): void {
    this.pokes++;
    const resolve = this.resolve;
    this.resolve = undefined;
    resolve?.();
  }

  /** Resolves at the next poke, or at once if poked since the count was `seen`. */
  wait(seen: number): Promise<void> {
    if (this.pokes !== seen) return Promise.resolve();
    return new Promise((resolve) => (this.resolve = resolve));
  }
}

export class Polls {
  private readonly held = new Set<Poll>();

  hold(session: string, instance: string): Poll {
    const poll = new Poll(session, instance);
    this.held.add(poll);
    return poll;
  }

  release(poll: Poll): void {
    this.held.delete(poll);
  }

  /** New work on an instance's queue: wakes the polls that have none. */
  pokeInstance(instance: string): void {
    for (const poll of this.held) if (poll.wantsWork && poll.instance === instance) poll.poke();
  }

  /** The session changed (its lease was cancelled, it was replaced or expired). */
  pokeSession(session: string): void {
    for (const poll of this.held) if (poll.session === session) poll.poke();
  }

  pokeAll(): void {
    for (const poll of this.held) poll.poke();
  }

  get size(): number {
    return this.held.size;
  }
}
