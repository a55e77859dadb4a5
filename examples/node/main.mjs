// Runs Basiq's first quick-start steps with the fleet's tokens from
// "tokencache serve": create a user with the server token, then read it
// back with that user's client token.
//
//   BASIQ_API_URL  the Basiq API (default https://au-api.basiq.io)
//   plus TOKENCACHE_URL and TOKENCACHE_LISTEN_SECRET (see basiq-auth.mjs)
import { basiqFetch } from './basiq-auth.mjs';

const API = (process.env.BASIQ_API_URL ?? 'https://au-api.basiq.io').replace(/\/$/, '');

const created = await basiqFetch(`${API}/users`, {
  method: 'POST',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({ email: 'gavin@hooli.com', mobile: '+61410888999' }),
});
if (created.status !== 201) {
  console.error(`POST /users: ${created.status} ${await created.text()}`);
  process.exit(1);
}
const user = await created.json();
console.log(`created user ${user.id} with the server token`);

const read = await basiqFetch(`${API}/users/${user.id}`, {}, user.id);
if (read.status !== 200) {
  console.error(`GET /users/${user.id}: ${read.status} ${await read.text()}`);
  process.exit(1);
}
console.log(`read user ${(await read.json()).id} back with its client token`);
