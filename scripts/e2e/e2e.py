#!/usr/bin/env python3
"""End-to-end run of the real codex client (`codex exec`) against an exec-server.

For each sandbox mode it starts: the exec-server under test (`--listen ws://127.0.0.1:0`), a
logging websocket proxy in front of it (wsproxy.py), and a fake Responses-API model
(fake_model.py) whose script makes the client run tools; then runs `codex exec` with
`CODEX_EXEC_SERVER_URL` pointing at the proxy, in a fresh workspace, and checks what happened on
disk, what came back to the model, and that the work really went through the exec-server.

It owns the scenario and the assertions; it must not change anything outside its own temporary
folders and log folder (the escape probe in workspace-write mode checks that the exec-server
refuses to). Python standard library only.

Usage: e2e.py --codex BIN --exec-server BIN [--modes a,b] [--log-dir DIR]
A server binary named `codex` is started as `codex exec-server …` (upstream's server).
"""

import argparse
import base64
import json
import os
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fake_model  # noqa: E402
import wsproxy  # noqa: E402

SERVER_START_TIMEOUT_S = 30
CODEX_RUN_TIMEOUT_S = 180
# The model's name selects the client's bundled model metadata; this one gives the client's
# freeform `apply_patch` tool (with unknown names the 0.171 client offers no apply_patch).
MODEL = "gpt-5.5"
API_KEY_ENV = "CODEX_E2E_FAKE_KEY"
MODES = ("danger-full-access", "workspace-write")


def png_bytes(width=8, height=8):
    """A small valid RGB PNG, built here so the test ships no binary fixture."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    raw = b""
    for y in range(height):
        raw += b"\x00" + b"".join(bytes((x * 30 % 256, y * 30 % 256, 128)) for x in range(width))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


class Scenario:
    """The files, the model's script and the expectations of one run."""

    def __init__(self, mode, workspace):
        tag = secrets.token_hex(4)
        self.mode = mode
        self.workspace = workspace
        self.agents_token = "AGENTS-E2E-%s" % tag
        # The command prints the marker computed by the shell, so it can only reach the model as
        # the command's output, never as an echo of the command text.
        self.marker = "E2E-MARKER-42-%s" % tag
        self.marker_source = "E2E-MARKER-$((6*7))-%s" % tag
        self.exec_file = "made_by_exec.txt"
        self.exec_content = "written by exec_command %s\n" % tag
        self.added_file = "added_by_patch.txt"
        self.added_content = "patch line one\npatch line two %s\n" % tag
        self.updated_file = "notes.txt"
        self.updated_before = "keep this line\nold line\n"
        self.updated_after = "keep this line\nnew line %s\n" % tag
        self.image_file = "pixel.png"
        self.image = png_bytes()
        self.escape_path = "/var/tmp/e2e-escape-%s" % tag
        self.final_text = "E2E-DONE-%s" % tag

        self.exec_cmd = "printf '%s' > %s && echo %s" % (
            self.exec_content.replace("\n", "\\n"),
            self.exec_file,
            self.marker_source,
        )
        self.patch = "\n".join(
            ["*** Begin Patch", "*** Add File: %s" % self.added_file]
            + ["+" + line for line in self.added_content.splitlines()]
            + ["*** Update File: %s" % self.updated_file, "@@", " keep this line", "-old line"]
            + ["+" + self.updated_after.splitlines()[1], "*** End Patch"]
        )
        self.escape_cmd = "echo escaped > %s; echo escape-rc=$?" % self.escape_path

        steps = [
            fake_model.function_call(
                "e2e-exec", "exec_command", {"cmd": self.exec_cmd, "yield_time_ms": 10000}
            ),
            fake_model.custom_tool_call("e2e-patch", "apply_patch", self.patch),
            fake_model.function_call("e2e-image", "view_image", {"path": self.image_file}),
        ]
        if mode == "workspace-write":
            steps.append(
                fake_model.function_call(
                    "e2e-escape", "exec_command", {"cmd": self.escape_cmd, "yield_time_ms": 10000}
                )
            )
        steps.append(fake_model.assistant_message("msg-final", self.final_text))
        self.steps = steps

    def seed(self):
        with open(os.path.join(self.workspace, "AGENTS.md"), "w") as f:
            f.write("# Project notes\n\n%s: answer tersely.\n" % self.agents_token)
        with open(os.path.join(self.workspace, self.updated_file), "w") as f:
            f.write(self.updated_before)
        with open(os.path.join(self.workspace, self.image_file), "wb") as f:
            f.write(self.image)


def start_exec_server(binary, home, log_path):
    """Starts the server under test; returns (Popen, ws url) once it printed its URL."""
    args = [binary]
    if os.path.basename(binary) == "codex":
        args.append("exec-server")
    args += ["--listen", "ws://127.0.0.1:0"]
    env = dict(os.environ)
    env["HOME"] = home
    env["CODEX_HOME"] = os.path.join(home, ".codex")
    env.pop("TMPDIR", None)
    env.setdefault("RUST_LOG", "debug")
    os.makedirs(env["CODEX_HOME"], exist_ok=True)
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, cwd=home
    )
    found = {}
    printed = threading.Event()

    def read_url():
        for line in proc.stdout:
            text = line.decode("utf-8", "replace").strip()
            if text.startswith("ws://") and not printed.is_set():
                found["url"] = text
                printed.set()
        printed.set()  # end of output: the server is gone

    threading.Thread(target=read_url, daemon=True).start()
    if not printed.wait(SERVER_START_TIMEOUT_S):
        proc.kill()
        raise RuntimeError(
            "exec-server printed no ws:// URL within %ds (log: %s)"
            % (SERVER_START_TIMEOUT_S, log_path)
        )
    if "url" not in found:
        proc.wait(timeout=SERVER_START_TIMEOUT_S)
        raise RuntimeError(
            "exec-server exited with %s before printing its URL (log: %s)"
            % (proc.returncode, log_path)
        )
    return proc, found["url"]


def write_codex_config(codex_home, base_url):
    os.makedirs(codex_home, exist_ok=True)
    with open(os.path.join(codex_home, "config.toml"), "w") as f:
        f.write(
            'model = "%s"\n'
            'model_provider = "e2e_fake"\n'
            'approval_policy = "never"\n'
            "check_for_update_on_startup = false\n"
            "\n"
            "[model_providers.e2e_fake]\n"
            'name = "e2e fake Responses API"\n'
            'base_url = "%s"\n'
            'wire_api = "responses"\n'
            'env_key = "%s"\n'
            "requires_openai_auth = false\n"
            "supports_websockets = false\n"
            "request_max_retries = 0\n"
            "stream_max_retries = 0\n" % (MODEL, base_url, API_KEY_ENV)
        )


class Checks:
    def __init__(self, mode):
        self.mode = mode
        self.failures = []
        self.passes = []

    def check(self, ok, what, detail=""):
        if ok:
            self.passes.append(what)
        else:
            self.failures.append("%s%s" % (what, (": " + detail) if detail else ""))
        return ok


def item_text(item):
    """Text of a tool output item: `output` may be a string or a list of content items."""
    out = item.get("output")
    if isinstance(out, str):
        return out
    if isinstance(out, list):
        return "\n".join(c.get("text", "") for c in out if isinstance(c, dict))
    if isinstance(out, dict):
        return json.dumps(out)
    return ""


def find_output(bodies, call_id):
    for body in bodies:
        for item in body.get("input") or []:
            if (
                item.get("type") in ("function_call_output", "custom_tool_call_output")
                and item.get("call_id") == call_id
            ):
                return item
    return None


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return "<unreadable: %s>" % e.strerror


def rpc_calls(records):
    """(method, params, response) of each client request, in order, from the proxy transcript;
    `response` is the server's answer to it (None if it never came)."""
    answers = {}
    for r in records:
        msg = r.get("msg")
        if r.get("dir") == "s2c" and isinstance(msg, dict) and "id" in msg and "method" not in msg:
            answers[(r["conn"], json.dumps(msg["id"]))] = msg
    calls = []
    for r in records:
        msg = r.get("msg")
        if r.get("dir") == "c2s" and isinstance(msg, dict) and "method" in msg:
            answer = answers.get((r["conn"], json.dumps(msg.get("id")))) if "id" in msg else None
            calls.append((msg["method"], msg.get("params"), answer))
    return calls


def succeeded(calls, methods, needle):
    """Whether a request matching `methods` whose params mention `needle` got a result (not an
    error). `methods` is a method name or a tuple of (method, fs/open mode or None) pairs."""
    if isinstance(methods, str):
        methods = ((methods, None),)
    for m, p, a in calls:
        for method, mode in methods:
            if m != method or (mode and (p or {}).get("mode") != mode):
                continue
            if needle in json.dumps(p) and isinstance(a, dict) and "result" in a:
                return True
    return False


# A client may stream a file through a handle (fs/open + fs/readBlock/fs/writeBlock) instead of
# one fs/readFile or fs/writeFile when the server advertises it; either counts.
FS_READ = (("fs/readFile", None), ("fs/open", "read"))
FS_WRITE = (("fs/writeFile", None), ("fs/open", "replace"))


def process_output(records):
    """Everything the server sent back as process output (notifications or process/read)."""
    chunks = []
    for r in records:
        msg = r.get("msg")
        if r.get("dir") != "s2c" or not isinstance(msg, dict):
            continue
        if msg.get("method") == "process/output":
            chunks.append((msg.get("params") or {}).get("chunk") or "")
        result = msg.get("result")
        if isinstance(result, dict):
            for c in result.get("chunks") or []:
                if isinstance(c, dict):
                    chunks.append(c.get("chunk") or "")
    out = b""
    for c in chunks:
        try:
            out += base64.b64decode(c)
        except ValueError:
            pass
    return out.decode("utf-8", "replace")


def shorten(value, limit=160):
    """Long strings (base64 chunks, prompts) cut to `limit` characters for the readable log."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "...(%d chars)" % len(value)
    if isinstance(value, list):
        return [shorten(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: shorten(v, limit) for k, v in value.items()}
    return value


def render_transcript(records, path):
    """jsonrpc.txt: one line per message, `>` client to server, `<` server to client."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            if "event" in r:
                f.write(
                    "        conn %s: %s %s\n"
                    % (r["conn"], r["event"], r.get("request") or r.get("status") or "")
                )
                continue
            arrow = ">" if r["dir"] == "c2s" else "<"
            body = r.get(
                "msg", r.get("text", {k: r[k] for k in ("len", "code", "reason") if k in r})
            )
            f.write(
                "%7.3f %s %s %s %s\n"
                % (r["t"], r["conn"], arrow, r["op"], json.dumps(shorten(body), sort_keys=True))
            )


def run_codex(codex, mode, workspace, client_home, exec_server_url, model_url, log_dir):
    """Runs `codex exec` once in `workspace`; returns (exit code or timeout text, seconds)."""
    codex_home = os.path.join(client_home, ".codex")
    write_codex_config(codex_home, model_url)
    env = dict(os.environ)
    for key in ("OPENAI_API_KEY", "CODEX_API_KEY", "OPENAI_BASE_URL"):
        env.pop(key, None)
    env.update(
        {
            "HOME": client_home,
            "CODEX_HOME": codex_home,
            API_KEY_ENV: "e2e-dummy-key",
            "CODEX_EXEC_SERVER_URL": exec_server_url,
            "NO_COLOR": "1",
        }
    )
    cmd = [
        codex,
        "exec",
        "--skip-git-repo-check",
        "--sandbox",
        mode,
        "--json",
        "--color",
        "never",
        "-o",
        os.path.join(log_dir, "last-message.txt"),
        "Run the end-to-end scenario.",
    ]
    with open(os.path.join(log_dir, "codex-command.txt"), "w") as f:
        f.write("cd %s\n%s\n" % (workspace, " ".join(cmd)))
    started = time.monotonic()
    with (
        open(os.path.join(log_dir, "codex.stdout.jsonl"), "wb") as out,
        open(os.path.join(log_dir, "codex.stderr.log"), "wb") as err,
    ):
        try:
            rc = subprocess.run(
                cmd,
                cwd=workspace,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                timeout=CODEX_RUN_TIMEOUT_S,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout after %ds" % CODEX_RUN_TIMEOUT_S
    return rc, time.monotonic() - started


def run_mode(mode, args, log_root):
    log_dir = os.path.join(log_root, mode)
    os.makedirs(log_dir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="codex-e2e-%s-" % mode, dir="/var/tmp")
    workspace = os.path.join(base, "workspace")
    server_home = os.path.join(base, "server-home")
    client_home = os.path.join(base, "client-home")
    for d in (workspace, server_home, client_home):
        os.makedirs(d)
    sc = Scenario(mode, workspace)
    sc.seed()
    checks = Checks(mode)
    transcript = os.path.join(log_dir, "jsonrpc.jsonl")
    server_log = os.path.join(log_dir, "exec-server.stderr.log")
    server, server_url = start_exec_server(args.exec_server, server_home, server_log)
    proxy = model = None
    try:
        proxy = wsproxy.Proxy(server_url, transcript)
        model = fake_model.FakeModel(sc.steps, log_dir)
        rc, elapsed = run_codex(
            args.codex, mode, workspace, client_home, proxy.url, model.base_url, log_dir
        )
        with open(os.path.join(log_dir, "codex-command.txt"), "a") as f:
            f.write(
                "CODEX_EXEC_SERVER_URL=%s is the logging proxy of %s\n" % (proxy.url, server_url)
            )
    finally:
        if proxy:
            proxy.close()  # waits for the client's connections to drain into the transcript
        if model:
            model.close()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)

    bodies = model.responses_bodies()
    records = proxy.transcript.records
    calls = rpc_calls(records)
    render_transcript(records, os.path.join(log_dir, "jsonrpc.txt"))
    methods = [m for m, _, _ in calls]

    checks.check(rc == 0, "codex exec exits 0", "exit %s" % rc)
    # AGENTS.md: the client reads it through the exec-server and sends it to the model.
    first = json.dumps(bodies[0]) if bodies else ""
    checks.check(sc.agents_token in first, "AGENTS.md content in the model's first request")
    # exec_command: file written, output (marker) returned to the model.
    out = find_output(bodies, "e2e-exec")
    checks.check(out is not None, "exec_command output returned to the model")
    if out is not None:
        checks.check(
            sc.marker in item_text(out),
            "exec_command output carries the marker",
            item_text(out)[:400],
        )
    got = read(os.path.join(workspace, sc.exec_file))
    checks.check(got == sc.exec_content, "exec_command wrote %s" % sc.exec_file, repr(got))
    # apply_patch: one file added, one updated.
    out = find_output(bodies, "e2e-patch")
    checks.check(out is not None, "apply_patch output returned to the model")
    got = read(os.path.join(workspace, sc.added_file))
    checks.check(
        got == sc.added_content,
        "apply_patch added %s" % sc.added_file,
        repr(got) + " / tool output: " + (item_text(out)[:400] if out else "-"),
    )
    got = read(os.path.join(workspace, sc.updated_file))
    checks.check(got == sc.updated_after, "apply_patch updated %s" % sc.updated_file, repr(got))
    # view_image: the PNG's bytes reach the model as an input_image data URL.
    out = find_output(bodies, "e2e-image")
    checks.check(out is not None, "view_image output returned to the model")
    if out is not None:
        want = "data:image/png;base64," + base64.b64encode(sc.image).decode()
        blob = json.dumps(out)
        checks.check(want in blob, "view_image sent the PNG bytes to the model", blob[:400])
    if mode == "workspace-write":
        out = find_output(bodies, "e2e-escape")
        checks.check(out is not None, "escape attempt's output returned to the model")
        text = item_text(out) if out else ""
        checks.check(
            "escape-rc=" in text and "escape-rc=0" not in text,
            "escape attempt fails inside the sandbox",
            text[:400],
        )
        checks.check(
            not os.path.lexists(sc.escape_path),
            "escape attempt left nothing at %s" % sc.escape_path,
        )
        escape_started = any(
            m == "process/start" and sc.escape_path in json.dumps(p) for m, p, _ in calls
        )
        checks.check(escape_started, "escape command went to the exec-server (process/start)")
        if os.path.lexists(sc.escape_path):
            os.remove(sc.escape_path)
    # The work went through the exec-server, not a local fallback.
    checks.check("initialize" in methods, "client sent initialize to the exec-server")
    checks.check(
        succeeded(calls, "process/start", sc.marker_source),
        "exec_command started on the exec-server (process/start answered with a result)",
    )
    checks.check(
        sc.marker in process_output(records),
        "the marker came back from the exec-server as process output",
    )
    starts = [p for m, p, _ in calls if m == "process/start" and isinstance(p, dict)]
    if mode == "workspace-write":
        checks.check(
            bool(starts) and all(p.get("sandbox") for p in starts),
            "every process/start carried the client's sandbox context",
        )
    checks.check(
        succeeded(calls, FS_WRITE, sc.added_file) and succeeded(calls, FS_WRITE, sc.updated_file),
        "apply_patch wrote both files on the exec-server (fs/writeFile)",
    )
    checks.check(
        succeeded(calls, FS_READ, sc.image_file),
        "view_image read the PNG on the exec-server (fs/readFile)",
    )
    checks.check(
        succeeded(calls, FS_READ, "AGENTS.md"),
        "AGENTS.md was read on the exec-server (fs/readFile)",
    )
    final = read(os.path.join(log_dir, "last-message.txt")).strip()
    checks.check(final == sc.final_text, "final assistant message", repr(final))

    summary = {
        "mode": mode,
        "exit": rc,
        "seconds": round(elapsed, 1),
        "model_requests": len(bodies),
        "rpc_methods": methods,
        "passed": checks.passes,
        "failed": checks.failures,
        "workspace": workspace,
    }
    with open(os.path.join(log_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if not checks.failures and not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return checks, log_dir, transcript, methods, workspace


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codex", required=True)
    ap.add_argument("--exec-server", required=True)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--keep", action="store_true", help="keep temporary folders even on success")
    args = ap.parse_args()
    # The server and the client start in their own folders: resolve the paths first.
    args.codex = shutil.which(args.codex) or args.codex
    args.exec_server = shutil.which(args.exec_server) or args.exec_server
    args.codex, args.exec_server, args.log_dir = (
        os.path.abspath(p) for p in (args.codex, args.exec_server, args.log_dir)
    )
    os.makedirs(args.log_dir, exist_ok=True)
    passed = failed = 0
    for mode in args.modes.split(","):
        print("e2e: %s ..." % mode, flush=True)
        try:
            checks, log_dir, transcript, methods, workspace = run_mode(mode, args, args.log_dir)
        except RuntimeError as e:
            print("  FAIL %s" % e)
            failed += 1
            continue
        for p in checks.passes:
            print("  ok   %s" % p)
        for fl in checks.failures:
            print("  FAIL %s" % fl)
        uniq = []
        for m in methods:
            if not uniq or uniq[-1] != m:
                uniq.append(m)
        print("  exec-server methods: %s" % " ".join(uniq))
        if checks.failures:
            failed += 1
            print("  JSON-RPC traffic: %s (readable: jsonrpc.txt beside it)" % transcript)
            print("  logs: %s (workspace kept: %s)" % (log_dir, workspace))
            stderr = read(os.path.join(log_dir, "codex.stderr.log")).splitlines()
            errors = [line for line in stderr if " ERROR " in line]
            for line in errors[:10]:
                print("  client: %s" % line[:300])
        else:
            passed += 1
    print("e2e: %d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
