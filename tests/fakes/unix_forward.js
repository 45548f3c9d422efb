'use strict';
// A byte forwarder from a unix socket to 127.0.0.1:<port>, standing in for what sits between
// the worker and an agent: a per-sandbox socket (docker) or a proxy that cuts long responses.
//
//   node unix_forward.js <socket path> <port> [--cut-after BYTES]
//
// --cut-after: once a connection has carried BYTES of response since the client last sent
// anything, both sides are closed (as a proxy with a response limit would).
// Prints "listening unix" once ready; stops when stdin closes.
const net = require('net');
const fs = require('fs');

const [sock, portText] = process.argv.slice(2);
const ci = process.argv.indexOf('--cut-after');
const cutAfter = ci >= 0 ? Number(process.argv[ci + 1]) : 0;

if (fs.existsSync(sock)) fs.unlinkSync(sock);
const server = net.createServer((client) => {
    const upstream = net.connect({ host: '127.0.0.1', port: Number(portText) });
    let sinceRequest = 0;
    client.on('data', (d) => {
        sinceRequest = 0;
        upstream.write(d);
    });
    upstream.on('data', (d) => {
        if (cutAfter > 0 && sinceRequest + d.length > cutAfter) {
            client.write(d.subarray(0, Math.max(0, cutAfter - sinceRequest)));
            client.destroy();
            upstream.destroy();
            return;
        }
        sinceRequest += d.length;
        client.write(d);
    });
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
});
server.listen(sock, () => process.stdout.write('listening unix\n'));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
