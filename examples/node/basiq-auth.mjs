// Basiq's "Auth Token" sample, rewritten to share one token with the whole
// fleet: instead of every process calling POST /token with the API key and
// refreshing on its own 30-minute timer, it asks the local tokencache
// endpoint ("tokencache serve"), which answers from memory and calls Basiq
// once per token lifetime for every replica together. The API key never
// enters this process.
//
// Plain fetch (Node 18+), no dependencies.
//
//   TOKENCACHE_URL            the local endpoint (default http://127.0.0.1:8200)
//   TOKENCACHE_LISTEN_SECRET  the bearer secret "tokencache serve" was given

const TOKENCACHE_URL = (process.env.TOKENCACHE_URL ?? 'http://127.0.0.1:8200').replace(/\/$/, '');

// Function to call the local endpoint with its bearer secret
const local = async (path, init = {}) => {
  const res = await fetch(TOKENCACHE_URL + path, {
    ...init,
    headers: { ...init.headers, Authorization: `Bearer ${process.env.TOKENCACHE_LISTEN_SECRET}` },
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    // 503 says why no token can be had (issuer error code, Redis down...)
    throw new Error(`tokencache ${path}: ${res.status} ${body.reason ?? ''}`.trim());
  }
  return body;
};

// Function to get the server token: no cache of our own, the endpoint is
// the cache (memory first, refreshed ahead of expiry for the fleet)
export const getServerToken = async () => (await local('/v1/token')).access_token;

// Function to get the authorization header with the Basiq server token
export const getBasiqAuthorizationHeader = async () => `Bearer ${await getServerToken()}`;

// Function to get a client token for a specific user (CLIENT_ACCESS)
export const getClientToken = async userId =>
  (await local(`/v1/token?user_id=${encodeURIComponent(userId)}`)).access_token;

// Function to report a token the API rejected with 401: the fleet drops it
// once and the next getServerToken gets a new one, unless the report is
// taken as the API's fault ({held: true}: the token is kept for a while)
export const reportUnauthorized = async (token, userId) =>
  local(`/v1/token/invalidate${userId ? `?user_id=${encodeURIComponent(userId)}` : ''}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ access_token: token }),
  });

// Function to call the Basiq API with the server token (or a user's client
// token): on a 401 it reports the token and retries once with the new one
export const basiqFetch = async (url, init = {}, userId = undefined) => {
  const get = userId ? () => getClientToken(userId) : getServerToken;
  const send = token =>
    fetch(url, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}`, 'basiq-version': '3.0' } });
  const token = await get();
  const res = await send(token);
  if (res.status !== 401) return res;
  const report = await reportUnauthorized(token, userId);
  if (report.held) return res; // the API rejects new tokens too: no retry
  return send(await get());
};
