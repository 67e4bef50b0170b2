// socket.io-client driven over stdin/stdout, one JSON object per line, by the gateway-socketio
// end-to-end tests (tests/common/mod.rs).
//
// Commands (each carries an `id`, echoed by its reply):
//   {op:"connect", id, name, url, ns, auth?, headers?, transports?, query?, timeoutMs?,
//    emits?:[{event, args, ack?}]}  (emits are made right away, before the connection is up)
//       -> {id, ok:true, sid, transport} on `connect`, {id, ok:false, error:<connect_error message>, data?}
//   {op:"emit", id, name, event, args?:[...], ack?:bool, timeoutMs?}
//       -> {id, ack:[...]} (ack) or {id, ok:true}
//   {op:"close", id, name} -> {id, ok:true}
//   {op:"connected", id, name} -> {id, connected:bool}
// Pushed without a request, in the order the client saw them:
//   {conn, event, args}                      every event a connection receives (onAny)
//   {conn, event:"disconnect", args:[reason]} when a connected socket is disconnected
//   {conn, event:"driver:ack", args:[event, ...response]} the ack of an `emits` entry
//   {conn, event:"driver:ack-timeout", args:[event]}    no ack for it in time
// Anything that goes wrong is answered as {id, error} (or {error} when there is no id); the
// driver itself never exits before stdin closes.
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const sockets = new Map();

function send(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function plain(values) {
  // Ack callbacks the server asks for are functions: not representable, not forwarded.
  return values.filter((v) => typeof v !== "function").map((v) => (v === undefined ? null : v));
}

function socketOf(name) {
  const socket = sockets.get(name);
  if (!socket) throw new Error(`no connection named ${JSON.stringify(name)}`);
  return socket;
}

function connect(cmd) {
  if (typeof cmd.name !== "string" || cmd.name === "") throw new Error("connect needs a name");
  if (typeof cmd.url !== "string") throw new Error("connect needs a url");
  if (sockets.has(cmd.name)) throw new Error(`connection ${cmd.name} exists`);
  const socket = io(cmd.url + (cmd.ns ?? "/"), {
    forceNew: true,
    reconnection: false,
    autoConnect: false,
    timeout: cmd.timeoutMs ?? 10000,
    transports: cmd.transports ?? ["websocket"],
    auth: cmd.auth ?? {},
    extraHeaders: cmd.headers ?? {},
    query: cmd.query ?? {},
  });
  sockets.set(cmd.name, socket);
  socket.onAny((event, ...args) => send({ conn: cmd.name, event, args: plain(args) }));
  return new Promise((resolve) => {
    let settled = false;
    socket.once("connect", () => {
      settled = true;
      socket.on("disconnect", (reason) =>
        send({ conn: cmd.name, event: "disconnect", args: [reason] }),
      );
      resolve({ id: cmd.id, ok: true, sid: socket.id, transport: socket.io.engine?.transport?.name });
    });
    socket.once("connect_error", (err) => {
      if (settled) return;
      settled = true;
      socket.close();
      sockets.delete(cmd.name);
      const reply = { id: cmd.id, ok: false, error: String(err?.message ?? err) };
      if (err && err.data !== undefined) reply.data = err.data;
      resolve(reply);
    });
    socket.connect();
    // Emitted at once, before the connection is up: socket.io-client buffers them and sends
    // them as soon as the namespace is joined (the seed's `io(...); socket.emit(...)`).
    for (const e of cmd.emits ?? []) {
      const args = Array.isArray(e.args) ? e.args : [];
      if (!e.ack) {
        socket.emit(String(e.event), ...args);
        continue;
      }
      socket.timeout(e.timeoutMs ?? 10000).emit(String(e.event), ...args, (err, ...response) => {
        if (err) send({ conn: cmd.name, event: "driver:ack-timeout", args: [e.event] });
        else send({ conn: cmd.name, event: "driver:ack", args: [e.event, ...plain(response)] });
      });
    }
  });
}

function emit(cmd) {
  const socket = socketOf(cmd.name);
  if (typeof cmd.event !== "string") throw new Error("emit needs an event");
  const args = cmd.args ?? [];
  if (!Array.isArray(args)) throw new Error("emit args must be an array");
  if (!cmd.ack) {
    socket.emit(cmd.event, ...args);
    return Promise.resolve({ id: cmd.id, ok: true });
  }
  return new Promise((resolve) => {
    socket.timeout(cmd.timeoutMs ?? 10000).emit(cmd.event, ...args, (err, ...response) => {
      if (err) resolve({ id: cmd.id, error: `no ack: ${err.message ?? err}` });
      else resolve({ id: cmd.id, ack: plain(response) });
    });
  });
}

async function handle(cmd) {
  switch (cmd.op) {
    case "connect":
      return connect(cmd);
    case "emit":
      return emit(cmd);
    case "close": {
      const socket = socketOf(cmd.name);
      socket.close();
      sockets.delete(cmd.name);
      return { id: cmd.id, ok: true };
    }
    case "connected":
      return { id: cmd.id, connected: sockets.get(cmd.name)?.connected === true };
    default:
      throw new Error(`unknown op ${JSON.stringify(cmd.op)}`);
  }
}

process.on("uncaughtException", (err) => send({ error: `uncaught: ${err?.stack ?? err}` }));
process.on("unhandledRejection", (err) => send({ error: `unhandled: ${err?.stack ?? err}` }));

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (line.trim() === "") return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    send({ error: `not JSON: ${err.message}` });
    return;
  }
  if (cmd === null || typeof cmd !== "object") {
    send({ error: "a command is a JSON object" });
    return;
  }
  Promise.resolve()
    .then(() => handle(cmd))
    .then(
      (reply) => send(reply),
      (err) => send({ id: cmd.id ?? null, error: String(err?.message ?? err) }),
    );
});
lines.on("close", () => {
  for (const socket of sockets.values()) socket.close();
  process.exit(0);
});
