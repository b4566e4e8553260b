// Drives the npm package bilibili-live-ws (a real Bilibili live client)
// against a danmaku server, for tests/e2e/clients.rs.
//
//   node bilibili_live.mjs ws  URL  ROOMID PROTOVER [KEY]   (URL: ws://host:port/sub)
//   node bilibili_live.mjs tcp HOST:PORT ROOMID PROTOVER [KEY]
//
// Prints one JSON object per line on stdout: {"event":"live"} once
// authenticated, {"event":"heartbeat","online":N} for every heartbeat
// reply, {"event":"danmu",...} for every DANMU_MSG with the fields players
// read out of `info` (and the lengths of the arrays they index), {"event":"cmd","cmd":...} for any other command, and
// {"event":"close"} / {"event":"error","message":...}. Sends a heartbeat
// whenever a line "heartbeat" arrives on stdin; exits when stdin closes.
import { LiveWS, LiveTCP } from 'bilibili-live-ws';
import readline from 'node:readline';

const [kind, where, roomid, protover, key] = process.argv.slice(2);
const options = { protover: Number(protover) };
if (key) options.key = key;
let live;
if (kind === 'ws') {
  live = new LiveWS(Number(roomid), { ...options, address: where });
} else if (kind === 'tcp') {
  const [host, port] = where.split(':');
  live = new LiveTCP(Number(roomid), { ...options, host, port: Number(port) });
} else {
  throw new Error(`unknown transport ${kind}`);
}
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');

live.on('live', () => say({ event: 'live' }));
live.on('heartbeat', (online) => say({ event: 'heartbeat', online }));
live.on('DANMU_MSG', (data) => {
  const info = data.info;
  say({
    event: 'danmu',
    mode: info[0][1],
    size: info[0][2],
    color: info[0][3],
    ts: info[0][4],
    text: info[1],
    uid: info[2][0],
    name: info[2][1],
    // What popular parsers index beyond these: medal, level, title, guard.
    medal: info[3],
    level: info[4][0],
    levelSlots: info[4].length,
    title: info[5],
    guard: info[7],
    // How many slots there are, where blivedm reads info[16][0] (wealth
    // level) and info[0][15], and blive-message-listener parses
    // info[0][15].extra as JSON (a throw here exits the client).
    slots: info.length,
    modeSlots: info[0].length,
    userSlots: info[2].length,
    wealth: info[16][0],
    extra: JSON.parse(info[0][15].extra),
  });
});
live.on('msg', (data) => {
  const cmd = data.cmd || (data.msg && data.msg.cmd);
  if (cmd && !cmd.includes('DANMU_MSG')) say({ event: 'cmd', cmd, data });
});
live.on('close', () => say({ event: 'close' }));
live.on('error', (e) => say({ event: 'error', message: String(e && e.message || e) }));

const input = readline.createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (line.trim() === 'heartbeat') live.heartbeat();
});
input.on('close', () => {
  live.close();
  setTimeout(() => process.exit(0), 100);
});
