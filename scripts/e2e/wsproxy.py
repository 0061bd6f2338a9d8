"""Logging websocket proxy: sits between the codex client and an exec-server and records every
JSON-RPC message of every connection, in both directions, to a JSONL transcript.

It relays bytes untouched except for one thing: it drops the client's
`Sec-WebSocket-Extensions` header, so no compression is negotiated and every frame can be read
as it passes. It never originates frames; it only parses copies of what it forwards.
Python standard library only.
"""

import json
import socket
import threading
import time

HEADER_LIMIT_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 10.0
RECV_CHUNK_BYTES = 256 * 1024

OPCODES = {0: "cont", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}


class FrameReader:
    """Incremental websocket frame parser for one direction; yields whole messages."""

    def __init__(self):
        self.buf = bytearray()
        self.parts = []
        self.first_opcode = None

    def feed(self, data):
        self.buf += data
        out = []
        while True:
            frame = self._take_frame()
            if frame is None:
                return out
            fin, opcode, payload = frame
            if opcode >= 8:
                out.append((opcode, payload))
                continue
            if opcode != 0:
                self.first_opcode = opcode
                self.parts = []
            self.parts.append(payload)
            if fin:
                out.append((self.first_opcode or 0, b"".join(self.parts)))
                self.parts = []
                self.first_opcode = None

    def _take_frame(self):
        b = self.buf
        if len(b) < 2:
            return None
        fin = bool(b[0] & 0x80)
        opcode = b[0] & 0x0F
        masked = bool(b[1] & 0x80)
        length = b[1] & 0x7F
        pos = 2
        if length == 126:
            if len(b) < 4:
                return None
            length = int.from_bytes(b[2:4], "big")
            pos = 4
        elif length == 127:
            if len(b) < 10:
                return None
            length = int.from_bytes(b[2:10], "big")
            pos = 10
        mask = b""
        if masked:
            if len(b) < pos + 4:
                return None
            mask = bytes(b[pos : pos + 4])
            pos += 4
        if len(b) < pos + length:
            return None
        payload = bytes(b[pos : pos + length])
        del b[: pos + length]
        if masked:
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        return fin, opcode, payload


class Transcript:
    """Thread-safe JSONL writer; one line per websocket message."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.file = open(path, "w", encoding="utf-8")
        self.t0 = time.monotonic()
        self.records = []

    def write(self, conn, direction, opcode, payload):
        rec = {
            "t": round(time.monotonic() - self.t0, 4),
            "conn": conn,
            "dir": direction,
            "op": OPCODES.get(opcode, str(opcode)),
        }
        if opcode == 1:
            text = payload.decode("utf-8", "replace")
            try:
                rec["msg"] = json.loads(text)
            except ValueError:
                rec["text"] = text
        elif opcode == 8:
            if len(payload) >= 2:
                rec["code"] = int.from_bytes(payload[:2], "big")
                rec["reason"] = payload[2:].decode("utf-8", "replace")
        else:
            rec["len"] = len(payload)
        self.note(rec)

    def note(self, rec):
        with self.lock:
            if self.file.closed:
                return
            self.records.append(rec)
            self.file.write(json.dumps(rec, sort_keys=True) + "\n")
            self.file.flush()

    def close(self):
        with self.lock:
            self.file.close()


def _read_head(sock):
    """Reads an HTTP head (up to and including the blank line); returns (head, rest)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("peer closed during HTTP handshake")
        data += chunk
        if len(data) > HEADER_LIMIT_BYTES:
            raise ConnectionError("HTTP head over %d bytes" % HEADER_LIMIT_BYTES)
    head, rest = data.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


def _strip_extensions(head):
    lines = head.split(b"\r\n")
    kept = [h for h in lines if not h.lower().startswith(b"sec-websocket-extensions:")]
    return b"\r\n".join(kept)


class Proxy:
    """Listens on 127.0.0.1:0 and relays each accepted connection to `upstream_url`."""

    def __init__(self, upstream_url, transcript_path):
        assert upstream_url.startswith("ws://"), upstream_url
        hostport = upstream_url[len("ws://") :].split("/", 1)[0]
        host, port = hostport.rsplit(":", 1)
        self.upstream = (host.strip("[]"), int(port))
        self.transcript = Transcript(transcript_path)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = "ws://127.0.0.1:%d" % self.listener.getsockname()[1]
        self.next_conn = 0
        self.closed = False
        self.sockets = []
        self.threads = []
        self.accepter = threading.Thread(target=self._accept_loop, daemon=True)
        self.accepter.start()

    def _accept_loop(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.next_conn += 1
            t = threading.Thread(target=self._serve, args=(client, self.next_conn), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, client, conn):
        try:
            upstream = socket.create_connection(self.upstream, timeout=CONNECT_TIMEOUT_S)
            upstream.settimeout(None)
        except OSError as e:
            self.transcript.note({"conn": conn, "event": "upstream connect failed: %s" % e})
            client.close()
            return
        self.sockets += [client, upstream]
        try:
            head, rest = _read_head(client)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            self.transcript.note({"conn": conn, "event": "open", "request": request_line})
            upstream.sendall(_strip_extensions(head) + rest)
            rhead, rrest = _read_head(upstream)
            status = rhead.split(b"\r\n", 1)[0].decode("latin-1")
            self.transcript.note({"conn": conn, "event": "upgrade", "status": status})
            client.sendall(rhead)
        except (OSError, ConnectionError) as e:
            self.transcript.note({"conn": conn, "event": "handshake failed: %s" % e})
            client.close()
            upstream.close()
            return
        c2s = threading.Thread(
            target=self._pump, args=(client, upstream, conn, "c2s", rest), daemon=True
        )
        s2c = threading.Thread(
            target=self._pump, args=(upstream, client, conn, "s2c", rrest), daemon=True
        )
        c2s.start()
        s2c.start()
        c2s.join()
        s2c.join()
        self.transcript.note({"conn": conn, "event": "closed"})

    def _pump(self, src, dst, conn, direction, first):
        reader = FrameReader()
        data = first
        while True:
            if data:
                for opcode, payload in reader.feed(data):
                    self.transcript.write(conn, direction, opcode, payload)
                try:
                    dst.sendall(data)
                except OSError:
                    break
            try:
                data = src.recv(RECV_CHUNK_BYTES)
            except OSError:
                break
            if not data:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        """Stops accepting, lets every relayed connection end (the client has exited, so they
        do), force-closes what is still open after DRAIN_TIMEOUT_S, then closes the transcript."""
        self.closed = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.accepter.join(DRAIN_TIMEOUT_S)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for t in list(self.threads):
            t.join(max(0.0, deadline - time.monotonic()))
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass
        for t in list(self.threads):
            t.join(1.0)
        self.transcript.close()
