/**
 * A bad config file, config field or command-line flag. The message names the field or
 * flag and says what is wrong; the CLI prints it as it is and exits (no stack trace).
 */
export class ConfigError extends Error {
  override name = 'ConfigError';
}
