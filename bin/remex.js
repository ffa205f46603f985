#!/usr/bin/env node
// Entry point of the `remex` command: the compiled CLI lives in dist/ (built by `npm ci`).
import '../dist/src/cli.js';
