// A small HTTPS server for the FHIR client's TLS tests: `node https-server.mjs CERT KEY PORT_FILE
// [--http1]`. Listens on 127.0.0.1 (a free port, written to PORT_FILE once listening) and answers
// every request with a FHIR Parameters resource naming the HTTP version the request came in and
// the connection it came on (1, 2, ... in the order the connections were opened). By default it
// offers HTTP/2 and HTTP/1.1 (ALPN); with --http1 only HTTP/1.1.
import fs from "node:fs";
import http2 from "node:http2";
import https from "node:https";

const [cert, key, portFile, mode] = process.argv.slice(2);
if (!cert || !key || !portFile) {
  console.error("usage: node https-server.mjs CERT KEY PORT_FILE [--http1]");
  process.exit(2);
}
const tls = { cert: fs.readFileSync(cert), key: fs.readFileSync(key) };
let connections = 0;
const ids = new WeakMap();
const answer = (req, res) => {
  const connection = req.stream?.session ?? req.socket;  // an HTTP/2 session, or an HTTP/1.1 socket
  const body = JSON.stringify({
    resourceType: "Parameters",
    parameter: [
      { name: "httpVersion", valueString: req.httpVersion },
      { name: "connection", valueInteger: ids.get(connection) ?? 0 },
    ],
  });
  res.writeHead(200, { "content-type": "application/fhir+json" });
  res.end(body);
};
const server = mode === "--http1" ? https.createServer(tls, answer) : http2.createSecureServer({ ...tls, allowHTTP1: true }, answer);
server.on("secureConnection", (socket) => {
  if (socket.alpnProtocol !== "h2") ids.set(socket, ++connections);
});
server.on("session", (session) => ids.set(session, ++connections));
server.listen(0, "127.0.0.1", () => fs.writeFileSync(portFile, String(server.address().port)));
process.on("SIGTERM", () => process.exit(0));
