import { BubblewrapRunner } from './bubblewrap-runner.js';
import { HostToolsRunner } from './hosttools-runner.js';
import { runnerContract } from './runner.contract.js';

runnerContract('hosttools', async () => ({ runner: new HostToolsRunner() }));

runnerContract('bubblewrap', async () => {
  if (!(await BubblewrapRunner.available())) {
    throw new Error('bwrap cannot run here: install Debian package bubblewrap (and allow user namespaces)');
  }
  return { runner: new BubblewrapRunner() };
});
