/**
 * What every store and scheduler call carries from the request that caused it: the
 * signal that aborts it when the client goes away or its deadline passes.
 */
export interface StoreContext {
  signal?: AbortSignal;
}
