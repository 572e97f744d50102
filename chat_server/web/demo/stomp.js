// A small STOMP 1.2 client over WebSocket, written for the chat_server demo page.
//
// One StompConnection is one WebSocket: CONNECT with a bearer token, heart-beats both ways,
// SUBSCRIBE/UNSUBSCRIBE/SEND with receipts, frames parsed from bytes (content-length honoured,
// several frames per message, one frame over several messages). It never reconnects by itself:
// the page (app.js) owns reconnection, because only the page knows what to resume.
"use strict";

(function (global) {
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const NUL = 0;
  const LF = 10;
  const CR = 13;

  // STOMP 1.2 header escaping (CONNECT and CONNECTED frames are not escaped).
  function escapeHeader(value) {
    return String(value)
      .replace(/\\/g, "\\\\")
      .replace(/\r/g, "\\r")
      .replace(/\n/g, "\\n")
      .replace(/:/g, "\\c");
  }

  function unescapeHeader(value) {
    return value.replace(/\\(.)/g, (_, ch) => ({ r: "\r", n: "\n", c: ":", "\\": "\\" })[ch] ?? ch);
  }

  function encodeFrame(command, headers, body) {
    const escape = command === "CONNECT" ? (v) => String(v) : escapeHeader;
    const bodyBytes = encoder.encode(body ?? "");
    let head = command + "\n";
    for (const [name, value] of Object.entries(headers)) {
      if (value !== undefined && value !== null) head += escape(name) + ":" + escape(value) + "\n";
    }
    if (bodyBytes.length > 0) head += "content-length:" + bodyBytes.length + "\n";
    const headBytes = encoder.encode(head + "\n");
    const frame = new Uint8Array(headBytes.length + bodyBytes.length + 1);
    frame.set(headBytes, 0);
    frame.set(bodyBytes, headBytes.length);
    frame[frame.length - 1] = NUL;
    return frame;
  }

  // Incremental parser: push() bytes in, get complete frames out.
  class FrameParser {
    constructor() {
      this.buffer = new Uint8Array(0);
    }

    push(chunk) {
      const joined = new Uint8Array(this.buffer.length + chunk.length);
      joined.set(this.buffer, 0);
      joined.set(chunk, this.buffer.length);
      this.buffer = joined;
      const frames = [];
      for (;;) {
        const frame = this.next();
        if (frame === null) break;
        frames.push(frame);
      }
      return frames;
    }

    next() {
      let start = 0;
      const buf = this.buffer;
      while (start < buf.length && (buf[start] === LF || buf[start] === CR)) start++; // heart-beats
      if (start > 0) {
        this.buffer = buf.subarray(start);
        return this.next();
      }
      let headEnd = -1;
      for (let i = 0; i + 1 < buf.length; i++) {
        if (buf[i] === LF && buf[i + 1] === LF) { headEnd = i; break; }
        if (buf[i] === LF && buf[i + 1] === CR && buf[i + 2] === LF) { headEnd = i; break; }
      }
      if (headEnd < 0) return null;
      const bodyStart = headEnd + (buf[headEnd + 1] === CR ? 3 : 2);
      const lines = decoder.decode(buf.subarray(0, headEnd)).split("\n").map((l) => l.replace(/\r$/, ""));
      const command = lines.shift();
      const escaped = command !== "CONNECTED";
      const headers = {};
      for (const line of lines) {
        const colon = line.indexOf(":");
        if (colon < 0) continue;
        const name = escaped ? unescapeHeader(line.slice(0, colon)) : line.slice(0, colon);
        if (name in headers) continue; // the first of repeated headers wins
        const raw = line.slice(colon + 1);
        headers[name] = escaped ? unescapeHeader(raw) : raw;
      }
      let bodyEnd;
      if ("content-length" in headers) {
        bodyEnd = bodyStart + Number.parseInt(headers["content-length"], 10);
        if (buf.length <= bodyEnd) return null;
      } else {
        bodyEnd = buf.indexOf(NUL, bodyStart);
        if (bodyEnd < 0) return null;
      }
      const body = decoder.decode(buf.subarray(bodyStart, bodyEnd));
      this.buffer = buf.subarray(bodyEnd + 1);
      return { command, headers, body };
    }
  }

  class StompConnection {
    // options: {token, heartbeatMs, onConnected(headers), onClose(reason), onError(frame)}
    constructor(url, options) {
      this.options = options;
      this.parser = new FrameParser();
      this.handlers = new Map(); // subscription id -> onMessage(frame)
      this.receipts = new Map(); // receipt id -> callback
      this.nextId = 1;
      this.connected = false;
      this.closed = false;
      this.timers = [];
      this.lastReceived = Date.now();
      this.ws = new WebSocket(url, ["v12.stomp"]);
      this.ws.binaryType = "arraybuffer";
      this.ws.onopen = () => this.sendFrame("CONNECT", {
        "accept-version": "1.2",
        host: global.location.hostname,
        "heart-beat": `${options.heartbeatMs},${options.heartbeatMs}`,
        Authorization: "Bearer " + options.token,
      });
      this.ws.onmessage = (event) => this.onData(event.data);
      this.ws.onclose = (event) => this.finish(`socket closed (${event.code})`);
      this.ws.onerror = () => this.finish("socket error");
    }

    onData(data) {
      if (this.closed) return;
      this.lastReceived = Date.now();
      const bytes = typeof data === "string" ? encoder.encode(data) : new Uint8Array(data);
      for (const frame of this.parser.push(bytes)) this.dispatch(frame);
    }

    dispatch(frame) {
      switch (frame.command) {
        case "CONNECTED":
          this.connected = true;
          this.startHeartbeats(frame.headers["heart-beat"] || "0,0");
          this.options.onConnected(frame.headers);
          break;
        case "MESSAGE": {
          const handler = this.handlers.get(frame.headers.subscription);
          if (handler) handler(frame);
          break;
        }
        case "RECEIPT": {
          const id = frame.headers["receipt-id"];
          const callback = this.receipts.get(id);
          this.receipts.delete(id);
          if (callback) callback();
          break;
        }
        case "ERROR":
          this.options.onError(frame); // the server closes the socket next
          break;
        default:
          break;
      }
    }

    // heart-beat negotiation as STOMP says: the larger of what one side can do and the other wants.
    startHeartbeats(serverValue) {
      const [serverSends, serverWants] = serverValue.split(",").map((v) => Number.parseInt(v, 10) || 0);
      const ours = this.options.heartbeatMs;
      if (ours > 0 && serverWants > 0) {
        const every = Math.max(ours, serverWants);
        this.timers.push(setInterval(() => this.sendRaw("\n"), every));
      }
      if (ours > 0 && serverSends > 0) {
        const expect = Math.max(ours, serverSends);
        this.timers.push(setInterval(() => {
          if (Date.now() - this.lastReceived > 2 * expect) this.drop("server went silent");
        }, Math.min(expect, 5000)));
      }
    }

    sendRaw(data) {
      if (this.ws.readyState === WebSocket.OPEN) this.ws.send(data);
    }

    sendFrame(command, headers, body) {
      this.sendRaw(encodeFrame(command, headers, body));
    }

    subscribe(destination, headers, onMessage) {
      const id = "sub-" + this.nextId++;
      this.handlers.set(id, onMessage);
      this.sendFrame("SUBSCRIBE", { id, destination, ack: "auto", ...headers });
      return id;
    }

    unsubscribe(id) {
      this.handlers.delete(id);
      this.sendFrame("UNSUBSCRIBE", { id });
    }

    // SEND with a receipt; onReceipt runs once the server has stored the message.
    send(destination, headers, body, onReceipt) {
      const receipt = "rcpt-" + this.nextId++;
      this.receipts.set(receipt, onReceipt);
      this.sendFrame("SEND", { destination, "content-type": "application/json", receipt, ...headers }, body);
      return receipt;
    }

    // A polite goodbye: DISCONNECT, then close.
    disconnect() {
      if (this.connected) this.sendFrame("DISCONNECT", {});
      this.drop("signed out");
    }

    // Close the socket without DISCONNECT, as a network failure would.
    drop(reason) {
      try { this.ws.close(); } catch (_) { /* already closing */ }
      this.finish(reason);
    }

    finish(reason) {
      if (this.closed) return;
      this.closed = true;
      this.connected = false;
      this.timers.forEach(clearInterval);
      this.timers = [];
      this.handlers.clear();
      this.receipts.clear();
      this.options.onClose(reason);
    }
  }

  global.Stomp = { StompConnection, FrameParser, encodeFrame };
})(window);
