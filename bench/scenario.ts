import type { RemexProcess } from '../test/helpers/remex-process.js';
import type { Limits } from './limits.js';
import type { Params } from './params.js';

export interface ScenarioContext {
  params: Params;
  limits: Limits;
  log(message: string): void;
}

/** One scenario: runs against a server started for it alone and returns its figures by id. */
export interface Scenario {
  name: string;
  run(server: RemexProcess, ctx: ScenarioContext): Promise<Record<string, number>>;
}
