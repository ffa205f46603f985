/** nginx/remex.conf and nginx/upstreams.example.conf as shipped, pointed at a test's processes. */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const NGINX_DIR = fileURLToPath(new URL('../../nginx/', import.meta.url));

/** nginx/remex.conf as shipped, listening on the test's port ({{PORT}}) instead of 50051. */
export async function shippedConfig(): Promise<string> {
  const text = await readFile(`${NGINX_DIR}remex.conf`, 'utf8');
  const listen = /^(\s*)listen 50051 http2;$/m;
  if (!listen.test(text)) throw new Error('nginx/remex.conf no longer has the line "listen 50051 http2;"');
  return text.replace(listen, '$1listen 127.0.0.1:{{PORT}} http2;');
}

export type RoleAddresses = Record<'execution' | 'cas' | 'actioncache', string | string[]>;

/** nginx/upstreams.example.conf with each role's server line replaced by the given addresses. */
export async function upstreamsConf(roles: RoleAddresses): Promise<string> {
  const text = await readFile(`${NGINX_DIR}upstreams.example.conf`, 'utf8');
  let replaced = 0;
  const out = text.replace(
    /^(\s*)server remex-(execution|cas|actioncache):50051;$/gm,
    (_, indent: string, role: keyof RoleAddresses) => {
      replaced++;
      return [roles[role]]
        .flat()
        .map((address) => `${indent}server ${address};`)
        .join('\n');
    },
  );
  if (replaced !== 3)
    throw new Error(`expected 3 server lines in upstreams.example.conf, replaced ${replaced}`);
  return out;
}
