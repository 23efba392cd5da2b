// A third-party CSMS for the local controller end-to-end test: ocpp-rpc's RPCServer in strictMode,
// which validates every call and response against the official OCPP 1.6J / 2.0.1 schemas in both
// directions. Prints one JSON line per event on stdout; takes one JSON command per line on stdin:
//   {"ref": 1, "client": "A16", "method": "RemoteStopTransaction", "params": {...}}  -> {"event":"reply",...}
// Usage: node csms.js PORT [PASSWORD]   (with PASSWORD, HTTP Basic auth is required: security profile 1)
'use strict';
const readline = require('readline');
const { RPCServer } = require('ocpp-rpc');

const port = Number(process.argv[2] || 0);
const password = process.argv[3];
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const clients = new Map();
let txIds = 7001;

const server = new RPCServer({ protocols: ['ocpp1.6', 'ocpp2.0.1'], strictMode: true });

server.auth((accept, reject, handshake) => {
    if (password !== undefined && (!handshake.password || handshake.password.toString('utf8') !== password)) {
        out({ event: 'refused', client: handshake.identity });
        reject(401);
        return;
    }
    accept();
});

server.on('client', (client) => {
    const id = client.identity;
    clients.set(id, client);
    out({ event: 'connected', client: id, protocol: client.protocol });
    client.on('message', ({ message, outbound }) => out({ event: 'frame', client: id, outbound, frame: message.toString() }));
    client.on('strictValidationFailure', (e) => out({
        event: 'invalid', client: id, method: e.method, outbound: e.outbound, isCall: e.isCall, error: String(e.error),
    }));
    client.on('badMessage', (e) => out({ event: 'bad', client: id, error: String(e.error) }));
    client.on('close', () => { if (clients.get(id) === client) clients.delete(id); out({ event: 'closed', client: id }); });
    const now = () => new Date().toISOString();
    client.handle('BootNotification', () => ({ status: 'Accepted', interval: 300, currentTime: now() }));
    client.handle('Heartbeat', () => ({ currentTime: now() }));
    client.handle('StatusNotification', () => ({}));
    client.handle('MeterValues', () => ({}));
    client.handle('Authorize', () => client.protocol === 'ocpp1.6'
        ? { idTagInfo: { status: 'Accepted' } } : { idTokenInfo: { status: 'Accepted' } });
    client.handle('StartTransaction', () => ({ transactionId: txIds++, idTagInfo: { status: 'Accepted' } }));
    client.handle('StopTransaction', () => ({}));
    client.handle('TransactionEvent', ({ params }) => (params.idToken ? { idTokenInfo: { status: 'Accepted' } } : {}));
    client.handle('NotifyEVChargingNeeds', () => ({ status: 'Accepted' }));
});

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
    let cmd;
    try { cmd = JSON.parse(line); } catch (e) { out({ event: 'error', error: 'bad command' }); return; }
    const client = clients.get(cmd.client);
    if (!client) { out({ event: 'reply', ref: cmd.ref, error: 'not connected' }); return; }
    try {
        out({ event: 'reply', ref: cmd.ref, result: await client.call(cmd.method, cmd.params) });
    } catch (e) {
        out({ event: 'reply', ref: cmd.ref, error: String(e) });
    }
});

server.listen(port, '127.0.0.1').then((http) => out({ event: 'listening', port: http.address().port }));
process.on('SIGTERM', async () => { await server.close({ force: true }); process.exit(0); });
