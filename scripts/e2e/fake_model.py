"""Fake Responses-API model server for the end-to-end run of `codex exec`.

It answers `POST /v1/responses` with a server-sent-event stream in the shape the codex client
parses (`response.created`, `response.output_item.done`, `response.completed`), and plays a
fixed script of tool calls. It decides the next step only from the tool-call outputs the client
sends back in `input`: the step after the last one whose output arrived. Every request body is
recorded (in memory and as `requests/NNN.json` in the log folder) for the assertions.
It must not judge the outputs: the harness does that after the run. Python stdlib only.
"""

import http.server
import json
import os
import threading

USAGE = {
    "input_tokens": 0,
    "input_tokens_details": None,
    "output_tokens": 0,
    "output_tokens_details": None,
    "total_tokens": 0,
}


def function_call(call_id, name, arguments):
    return {
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": json.dumps(arguments),
    }


def custom_tool_call(call_id, name, text):
    return {"type": "custom_tool_call", "call_id": call_id, "name": name, "input": text}


def assistant_message(msg_id, text):
    return {
        "type": "message",
        "role": "assistant",
        "id": msg_id,
        "content": [{"type": "output_text", "text": text}],
    }


def sse_body(response_id, item):
    events = [
        {"type": "response.created", "response": {"id": response_id}},
        {"type": "response.output_item.done", "item": item},
        {"type": "response.completed", "response": {"id": response_id, "usage": USAGE}},
    ]
    return "".join("event: %s\ndata: %s\n\n" % (e["type"], json.dumps(e)) for e in events).encode()


def output_call_ids(body):
    """call_ids of every tool output (function or custom) in a request's `input`."""
    ids = set()
    for item in body.get("input") or []:
        if item.get("type") in ("function_call_output", "custom_tool_call_output"):
            ids.add(item.get("call_id"))
    return ids


class FakeModel:
    """`steps` is a list of response items (tool calls, then a final assistant message)."""

    def __init__(self, steps, log_dir):
        self.steps = steps
        self.log_dir = os.path.join(log_dir, "requests")
        os.makedirs(self.log_dir, exist_ok=True)
        self.lock = threading.Lock()
        self.requests = []  # (method, path, headers dict, body or None)
        model = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                model._record("GET", self.path, self.headers, None)
                self._reply(404, "application/json", b'{"error":{"message":"not here"}}')

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                enc = (self.headers.get("content-encoding") or "").lower()
                if enc == "zstd":
                    self._reply(415, "text/plain", b"zstd request bodies not supported")
                    return
                if enc == "gzip":
                    import gzip

                    raw = gzip.decompress(raw)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                model._record("POST", self.path, self.headers, body)
                if not self.path.rstrip("/").endswith("/responses"):
                    self._reply(404, "application/json", b'{"error":{"message":"not here"}}')
                    return
                self._reply(200, "text/event-stream", model._next(body))

            def _reply(self, status, ctype, payload):
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = "http://127.0.0.1:%d/v1" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _record(self, method, path, headers, body):
        with self.lock:
            n = len(self.requests)
            self.requests.append((method, path, dict(headers), body))
        with open(os.path.join(self.log_dir, "%03d.json" % n), "w", encoding="utf-8") as f:
            json.dump(
                {"method": method, "path": path, "headers": dict(headers), "body": body},
                f,
                indent=1,
            )

    def _next(self, body):
        done = output_call_ids(body)
        index = 0
        for i, step in enumerate(self.steps):
            if step.get("call_id") in done:
                index = i + 1
        index = min(index, len(self.steps) - 1)
        return sse_body("resp-%d" % index, self.steps[index])

    def responses_bodies(self):
        with self.lock:
            return [
                b
                for (m, p, _, b) in self.requests
                if m == "POST" and p.rstrip("/").endswith("/responses")
            ]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
