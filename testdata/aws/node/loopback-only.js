// Preload (node -r) that binds every server an emulator opens to 127.0.0.1, whatever host the
// emulator asks for, and reports each bound port on stderr so the Go tests can find it.
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "object" && args[0] !== null) {
    args[0] = { ...args[0], host: "127.0.0.1" };
  } else if (typeof args[0] === "number" || typeof args[0] === "string") {
    const port = args[0];
    const cb = args.find((a) => typeof a === "function");
    args = [port, "127.0.0.1"];
    if (cb) args.push(cb);
  }
  this.once("listening", () => {
    const a = this.address();
    if (a && typeof a === "object") process.stderr.write(`DSMPROXY_LISTENING ${a.port}\n`);
  });
  return listen.apply(this, args);
};
