// Baseline for `load sio`: the `/admin` workload of gateway-socketio on npm `socket.io`.
//
// - HS256 JWT in `auth.token` (node:crypto; `exp` required, `nbf` checked), refused with the
//   same `connect_error` messages as the gateway.
// - `subscribe` / `unsubscribe` `{entities?: {<plural>: [id...]}, domains?: [<plural>...],
//   channels?: [<name>...]}` join/leave `entity:<plural>:<id>`, `domain:<plural>`,
//   `channel:<name>`; the reply `{subscribed, refused}` goes to the ack, else `subscribe:result`.
// - NATS `events.>`: per envelope, `<plural>_updated` and `<plural>_event_log` to
//   [`entity:<plural>:<id>`, `domain:<plural>`], `event_log_created` to `domain:event_log`,
//   `<channel>_message` to `channel:<channel>` when `audience.channel` is set
//   (events::surface::admin_emits).
//
// Environment: PORT (0 = any), HOST (127.0.0.1), NATS_URL, JWT_SECRET, PING_INTERVAL_MS (25000),
// PING_TIMEOUT_MS (20000), CONNECT_TIMEOUT_MS (45000).
// Prints `{"listening": <port>}` on stdout once it accepts connections.

import crypto from 'node:crypto';
import http from 'node:http';

import { connect } from 'nats';
import { Server } from 'socket.io';

const secret = process.env.JWT_SECRET ?? '';
if (secret.length < 16) {
  console.error('JWT_SECRET (at least 16 bytes) is required');
  process.exit(64);
}
const natsUrl = process.env.NATS_URL ?? 'nats://127.0.0.1:4222';

// events::surface PLURALS, then English's common rules.
const PLURALS = {
  deal: 'deals', order: 'orders', payout: 'payouts', customer: 'customers',
  provider: 'providers', product: 'products', profile: 'profiles', shipment: 'shipments',
  transaction: 'transactions',
};
const KNOWN = new Set([...Object.values(PLURALS), 'event_log']);

function plural(domain) {
  if (PLURALS[domain]) return PLURALS[domain];
  if (domain.endsWith('y') && !/[aeiou]y$/.test(domain)) return `${domain.slice(0, -1)}ies`;
  if (domain.endsWith('s') || domain.endsWith('x')) return `${domain}es`;
  return `${domain}s`;
}

const key = Buffer.from(secret, 'utf8');

function b64json(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

/** Returns null when the token is valid, else the gateway's refusal message. */
function verify(token) {
  if (typeof token !== 'string' || token === '') {
    return 'authentication required: auth.token is missing';
  }
  const parts = token.split('.');
  if (parts.length !== 3) return 'invalid token: malformed';
  let header;
  let claims;
  try {
    header = b64json(parts[0]);
    claims = b64json(parts[1]);
  } catch {
    return 'invalid token: malformed';
  }
  if (header.alg !== 'HS256') return 'invalid token: algorithm not allowed';
  const expected = crypto.createHmac('sha256', key).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2], 'base64url');
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    return 'invalid token: bad signature';
  }
  const now = Math.floor(Date.now() / 1000);
  if (typeof claims.exp !== 'number') return 'invalid token: malformed';
  if (claims.exp <= now) return 'invalid token: expired';
  if (typeof claims.nbf === 'number' && claims.nbf > now) return 'invalid token: not yet valid';
  return null;
}

const ID = /^[A-Za-z0-9_-]{1,128}$/;

/** Rooms named by a subscribe payload, and the refused targets. */
function targets(payload) {
  const rooms = [];
  const refused = [];
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
    return { rooms, refused: [{ target: 'payload', reason: 'expected an object' }] };
  }
  for (const [name, ids] of Object.entries(payload.entities ?? {})) {
    if (!KNOWN.has(name) || name === 'event_log') {
      refused.push({ target: `entities.${name}`, reason: 'unknown domain' });
      continue;
    }
    for (const id of Array.isArray(ids) ? ids : []) {
      const text = String(id);
      if (ID.test(text)) rooms.push(`entity:${name}:${text}`);
      else refused.push({ target: `entity:${name}:${text}`, reason: 'invalid id' });
    }
  }
  for (const name of Array.isArray(payload.domains) ? payload.domains : []) {
    if (KNOWN.has(name)) rooms.push(`domain:${name}`);
    else refused.push({ target: `domain:${name}`, reason: 'unknown domain' });
  }
  for (const name of Array.isArray(payload.channels) ? payload.channels : []) {
    if (typeof name === 'string' && ID.test(name)) rooms.push(`channel:${name}`);
    else refused.push({ target: `channel:${name}`, reason: 'invalid channel' });
  }
  return { rooms, refused };
}

const httpServer = http.createServer((req, res) => {
  if (req.url === '/healthz' || req.url === '/readyz') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok');
    return;
  }
  res.writeHead(404);
  res.end();
});

const io = new Server(httpServer, {
  serveClient: false,
  pingInterval: Number(process.env.PING_INTERVAL_MS ?? 25000),
  pingTimeout: Number(process.env.PING_TIMEOUT_MS ?? 20000),
  connectTimeout: Number(process.env.CONNECT_TIMEOUT_MS ?? 45000),
  maxHttpBufferSize: 100000,
});

const admin = io.of('/admin');
admin.use((socket, next) => {
  const refusal = verify(socket.handshake.auth?.token);
  if (refusal) next(new Error(refusal));
  else next();
});

admin.on('connection', (socket) => {
  const handler = (join, resultEvent) => (payload, ack) => {
    const { rooms, refused } = targets(payload);
    if (join) socket.join(rooms);
    else for (const room of rooms) socket.leave(room);
    const reply = join ? { subscribed: rooms, refused } : { unsubscribed: rooms, refused };
    if (typeof ack === 'function') ack(reply);
    else socket.emit(resultEvent, reply);
  };
  socket.on('subscribe', handler(true, 'subscribe:result'));
  socket.on('unsubscribe', handler(false, 'unsubscribe:result'));
});

function relay(data) {
  let envelope;
  try {
    envelope = JSON.parse(Buffer.from(data).toString('utf8'));
  } catch {
    return;
  }
  const domain = envelope?.entity?.domain;
  const id = envelope?.entity?.id;
  if (typeof domain !== 'string' || (typeof id !== 'string' && typeof id !== 'number')) return;
  const p = plural(domain);
  const rooms = [`entity:${p}:${id}`, `domain:${p}`];
  admin.to(rooms).emit(`${p}_updated`, envelope);
  admin.to(rooms).emit(`${p}_event_log`, envelope);
  admin.to('domain:event_log').emit('event_log_created', envelope);
  const channel = envelope?.audience?.channel;
  if (typeof channel === 'string') admin.to(`channel:${channel}`).emit(`${channel}_message`, envelope);
}

const nc = await connect({ servers: natsUrl, name: 'load-sio-node-baseline' });
nc.subscribe('events.>', {
  callback: (err, msg) => {
    if (!err) relay(msg.data);
  },
});
await nc.flush();

httpServer.listen(Number(process.env.PORT ?? 0), process.env.HOST ?? '127.0.0.1', () => {
  const { port } = httpServer.address();
  process.stdout.write(`${JSON.stringify({ listening: port, pid: process.pid })}\n`);
});

const stop = async () => {
  io.close();
  await nc.drain().catch(() => {});
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
