// Socket.IO 4.8 with connection state recovery, the peer of `python -m bench
// history recovery`: every client joins room `bench` (a recovered one is given
// its rooms back by the server); the in-memory adapter keeps the packets sent
// to rooms, each with an offset, for maxDisconnectionDuration.
// Usage: node socketio_recovery.js --host 127.0.0.1 --port PORT
// Orders on stdin, one a line, each answered on stdout:
//   emit N SIZE RUN  N events `bench` to the room, each a text "RUN <i> <SIZE x's>"
//                 -> "emitted N"
//   count         -> "count <connected sockets>"
'use strict';
const http = require('http');
const readline = require('readline');
const { Server } = require('socket.io');

const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt; };
const host = opt('--host', '127.0.0.1');
const port = Number(opt('--port', '0'));

const server = http.createServer();
const io = new Server(server, {
  transports: ['websocket'],
  perMessageDeflate: false,
  connectionStateRecovery: {
    // Longer than any run: a session is never given up while the bench waits.
    maxDisconnectionDuration: 10 * 60 * 1000,
    skipMiddlewares: true,
  },
});

io.on('connection', (socket) => {
  if (!socket.recovered) socket.join('bench');
});

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, a, b, run] = line.trim().split(/\s+/);
  if (cmd === 'emit') {
    const n = Number(a);
    const text = 'x'.repeat(Number(b));
    for (let i = 0; i < n; i++) io.to('bench').emit('bench', `${run} ${i} ${text}`);
    console.log(`emitted ${n}`);
  } else if (cmd === 'count') {
    console.log(`count ${io.of('/').sockets.size}`);
  } else {
    console.log(`unknown ${cmd}`);
  }
});

server.listen({ host, port, backlog: 4096 }, () => console.log(`ready ${host}:${port}`));
const stop = () => { io.close(); setTimeout(() => process.exit(0), 2000).unref(); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
