// Node's `ws` package: /echo echoes, /pub sends each message to every /sub
// connection (ws has no encode-once broadcast: one send() per client).
// Usage: node server.js --host 127.0.0.1 --port PORT
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt; };
const host = opt('--host', '127.0.0.1');
const port = Number(opt('--port', '0'));

const subscribers = new Set();
const server = http.createServer((req, res) => { res.writeHead(426); res.end('WebSocket only\n'); });
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 1 << 20 });

wss.on('connection', (ws, req) => {
  const path = (req.url || '').split('?')[0];
  if (path === '/echo') {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  } else if (path === '/sub') {
    subscribers.add(ws);
    ws.on('close', () => subscribers.delete(ws));
  } else if (path === '/pub') {
    ws.on('message', (data, isBinary) => {
      for (const s of subscribers) s.send(data, { binary: isBinary });
    });
  } else {
    ws.close(1008, 'unknown path');
  }
  ws.on('error', () => {});
});

server.listen({ host, port, backlog: 4096 }, () => console.log(`ready ${host}:${port}`));
const stop = () => { for (const c of wss.clients) c.terminate(); server.close(() => process.exit(0)); setTimeout(() => process.exit(0), 2000).unref(); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
