import { invalidArgument } from './status.js';

/** The instance names a server answers for; any other name is INVALID_ARGUMENT, named. */
export class Instances {
  private readonly names: ReadonlySet<string>;

  constructor(names: readonly string[]) {
    this.names = new Set(names);
  }

  check(name: string): string {
    if (!this.names.has(name)) {
      const known = [...this.names].map((n) => JSON.stringify(n)).join(', ');
      throw invalidArgument(`unknown instance name ${JSON.stringify(name)}; this server serves ${known}`);
    }
    return name;
  }
}
