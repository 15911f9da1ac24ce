// A Socket.IO 4 room relay, the comparison point of scripts/bench: each
// client joins the room named in its handshake query (?room=NAME), and every
// `msg` event it emits is relayed to the other members of that room. Nothing
// is stored or acknowledged. WebSocket transport only, no compression.
//   node bench/socketio-relay.js PORT
const http = require('node:http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 18601);
const server = http.createServer();
const io = new Server(server, { transports: ['websocket'], perMessageDeflate: false, serveClient: false });
io.on('connection', (socket) => {
  const room = String(socket.handshake.query.room || 'lobby');
  socket.join(room);
  socket.on('msg', (body) => socket.to(room).emit('msg', body));
});
server.listen(port, '127.0.0.1', () => console.log(`listening http=127.0.0.1:${port}`));
