#!/usr/bin/env python3
"""Black-box tests of sandbox-agent: start the real binary on free loopback ports and drive it
over HTTP. Usage: agent_blackbox.py <path-to-sandbox-agent>. Exit status 1 on any failure."""
import base64
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time

AGENT = sys.argv[1]
FAILS = []
PASSES = 0
AGENTS = []  # every Agent started; main() stops them and removes their directories


def check(cond, what):
    global PASSES
    if cond:
        PASSES += 1
    else:
        FAILS.append(what)
        print("FAIL:", what, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_until(pred, timeout=20.0, step=0.02):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


class Agent:
    def __init__(self, extra_env=None):
        self.port = free_port()
        self.hook_port = free_port()
        self.proc = None
        self.log = None
        self.tmp = tempfile.mkdtemp(prefix="agent-test-")
        AGENTS.append(self)
        env = dict(os.environ)
        env.update({"LD_AGENT_BIND": "127.0.0.1", "LD_AGENT_PORT": str(self.port),
                    "LD_AGENT_HOOK_PORT": str(self.hook_port),
                    "SANDBOX_AGENT_SPOOL_DIR": os.path.join(self.tmp, "spool"),
                    "LIGHTDASH_LOG_LEVEL": "debug"})
        env.update(extra_env or {})
        self.log = open(os.path.join(self.tmp, "agent.log"), "wb")
        prefix = os.environ.get("AGENT_PREFIX", "").split()
        self.proc = subprocess.Popen(prefix + [AGENT], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        ok = wait_until(self._ready, timeout=30)
        if not ok:
            self.stop()
            raise RuntimeError("agent did not become ready; log: " + self.logtext())

    def _ready(self):
        try:
            st, _, _ = self.req("GET", "/ready", timeout=1)
            return st == 200
        except OSError:
            return False

    def logtext(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def req(self, method, path, body=None, headers=None, port=None, timeout=60):
        c = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=timeout)
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        hdrs = dict((k.lower(), v) for k, v in r.getheaders())
        c.close()
        return r.status, hdrs, data

    def stop(self):
        """SIGTERM (SIGKILL after 20 s); returns the exit status. Safe to call again."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def cleanup(self):
        """Stops the agent and removes its directory (log included)."""
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def frames(body):
    lines = body.split(b"\n")
    check(lines[-1] == b"", "NDJSON body ends with a newline")
    return [json.loads(l) for l in lines[:-1]]


def exec_cmd(a, cmd, **kw):
    body = {"cmd": cmd}
    body.update(kw)
    st, hdrs, data = a.req("POST", "/exec", body)
    assert st == 200, (st, data)
    fr = frames(data)
    out = b"".join(base64.b64decode(f["data"]) for f in fr if f.get("stream") == "stdout")
    err = b"".join(base64.b64decode(f["data"]) for f in fr if f.get("stream") == "stderr")
    return fr, out, err, hdrs


def pid_gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")
    except FileNotFoundError:
        return True


def test_ready_and_hooks(a):
    st, h, body = a.req("GET", "/ready")
    j = json.loads(body)
    check(st == 200 and j["status"] == "ok" and "runs" in j["capabilities"], "/ready JSON")
    for name in ("ready", "validate", "run", "resume", "suspend", "terminate"):
        for m in ("GET", "POST"):
            st, h, body = a.req(m, "/aws/lambda-microvms/runtime/v1/" + name, port=a.hook_port)
            check(st == 200 and body == b"ok", "hook %s %s on the hook port" % (m, name))
        st, _, _ = a.req("POST", "/aws/lambda-microvms/runtime/v1/" + name)
        check(st == 404, "hook %s not served on the main port" % name)
    st, _, _ = a.req("POST", "/aws/lambda-microvms/runtime/v1/run",
                     {"envs": {"HOOK_VAR": "from-hook"}}, port=a.hook_port)
    check(st == 200, "run hook with envs")
    _, out, _, _ = exec_cmd(a, "echo $HOOK_VAR")
    check(out == b"from-hook\n", "run hook envs become the base environment")
    _, out, _, _ = exec_cmd(a, "echo $HOOK_VAR", envs={"HOOK_VAR": "request"})
    check(out == b"request\n", "request envs override the hook envs")
    st, _, body = a.req("GET", "/nope")
    check(st == 404 and body == b"not found", "unknown route 404")


def test_exec_framing(a):
    st, h, data = a.req("POST", "/exec", {"cmd": "printf hi; printf oops >&2; exit 3"})
    check(st == 200 and h.get("content-type") == "application/x-ndjson", "exec content type")
    # exact bytes: one frame per stream, then the exit code
    check(set(data.split(b"\n")[:-1]) == {b'{"stream":"stdout","data":"aGk="}',
                                          b'{"stream":"stderr","data":"b29wcw=="}',
                                          b'{"exitCode":3}'}, "exec exact NDJSON bytes")
    check(data.endswith(b'{"exitCode":3}\n'), "exit frame last")
    fr, _, _, _ = exec_cmd(a, "true")
    check(fr == [{"exitCode": 0}], "true -> only an exit frame")


def test_exec_binary(a):
    blob = os.urandom(3 * 1024 * 1024 + 7)
    path = os.path.join(a.tmp, "blob.bin")
    st, _, _ = a.req("POST", "/files?path=" + path, blob)
    check(st == 204, "write blob")
    _, out, err, _ = exec_cmd(a, "cat %s; cat %s >&2" % (path, path))
    check(out == blob, "stdout byte-exact for 3 MiB of binary")
    check(err == blob, "stderr byte-exact for 3 MiB of binary")


def test_exit_codes(a):
    for cmd, code in (("exit 42", 42), ("kill -TERM $$", 143), ("kill -KILL $$", 137),
                      ("exit 0", 0), ("no_such_command_xyz", 127)):
        fr, _, _, _ = exec_cmd(a, cmd)
        check(fr[-1] == {"exitCode": code}, "exit code of %r is %d (got %r)" % (cmd, code, fr[-1]))


def test_timeout_kills_group(a):
    pidfile = os.path.join(a.tmp, "grandchild.pid")
    t0 = time.time()
    fr, _, _, _ = exec_cmd(a, "sh -c 'sleep 300 & echo $! > %s; wait' ; echo never" % pidfile,
                           timeoutMs=700)
    check(fr[-1] == {"timeout": True}, "timeout frame")
    check(time.time() - t0 < 15, "timeout answered promptly")
    pid = int(open(pidfile).read())
    check(wait_until(lambda: pid_gone(pid), 10), "timeout killed the grandchild too")


def test_disconnect_kills(a):
    pidfile = os.path.join(a.tmp, "disc.pid")
    s = socket.create_connection(("127.0.0.1", a.port))
    body = json.dumps({"cmd": "sleep 300 & echo $! > %s; wait" % pidfile}).encode()
    s.sendall(b"POST /exec HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    check(wait_until(lambda: os.path.exists(pidfile) and os.path.getsize(pidfile) > 0, 20),
          "command started")
    pid = int(open(pidfile).read())
    check(not pid_gone(pid), "grandchild alive before the disconnect")
    s.close()
    check(wait_until(lambda: pid_gone(pid), 10), "client disconnect killed the process group")


def test_env_cwd(a):
    d = os.path.join(a.tmp, "work dir")
    os.makedirs(d)
    _, out, _, _ = exec_cmd(a, 'pwd; echo "$FOO|$NUM"', cwd=d, envs={"FOO": "a b=c", "NUM": 7})
    check(out == (d + "\na b=c|7\n").encode(), "cwd and envs (%r)" % out)
    fr, _, err, _ = exec_cmd(a, "pwd", cwd="/no/such/dir")
    # under valgrind posix_spawn degrades to fork+exec: the child reports the failure itself
    check(fr[-1] == {"exitCode": 127} and (err.startswith(b"agent: failed to spawn:") or
                                            os.environ.get("AGENT_PREFIX")),
          "bad cwd -> spawn failure 127")
    _, out, _, _ = exec_cmd(a, "read x; echo got:$x")
    check(out == b"got:\n", "stdin is empty")


def recv_until_close(s, timeout=20):
    s.settimeout(timeout)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def test_bad_requests(a):
    st, _, body = a.req("POST", "/exec", "{not json")
    check(st == 400 and body.startswith(b"invalid JSON body"), "bad JSON 400")
    st, _, body = a.req("POST", "/exec", {"cwd": "/"})
    check(st == 400 and body == b'missing "cmd"', "missing cmd 400")
    st, _, body = a.req("POST", "/exec", {"cmd": 5})
    check(st == 400 and body == b'missing "cmd"', "non-string cmd 400")
    s = socket.create_connection(("127.0.0.1", a.port))
    s.sendall(b"POST /exec HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n{")
    resp = s.recv(4096)
    s.close()
    check(resp.startswith(b"HTTP/1.1 413"), "oversized JSON body 413")
    s = socket.create_connection(("127.0.0.1", a.port))
    s.sendall(b"POST /exec HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    try:
        for _ in range(40):
            s.sendall(b"10000\r\n" + b"x" * 65536 + b"\r\n")
    except OSError:
        pass
    resp = s.recv(4096)
    s.close()
    check(resp.startswith(b"HTTP/1.1 413"), "oversized chunked JSON body 413")
    s = socket.create_connection(("127.0.0.1", a.port))
    s.sendall(b"GET /ready HTTP/1.1\r\n" + b"X-Big: " + b"a" * 40000 + b"\r\n\r\n")
    resp = s.recv(4096)
    s.close()
    check(resp.startswith(b"HTTP/1.1 431"), "oversized head 431")
    s = socket.create_connection(("127.0.0.1", a.port))
    s.sendall(b"GARBAGE\r\n\r\n")
    resp = recv_until_close(s)
    check(resp.startswith(b"HTTP/1.1 400"), "malformed request line 400")
    # the declared Content-Length covers the whole message (it used to cut the last byte)
    check(resp.endswith(b"Content-Length: 17\r\nConnection: close\r\n\r\nmalformed request"),
          "malformed request: complete body (%r)" % resp)


def test_keepalive_pipelining(a):
    s = socket.create_connection(("127.0.0.1", a.port))
    body = b'{"cmd":"echo x"}'
    one = b"POST /exec HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    s.sendall(one + one + b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    s.settimeout(20)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    check(data.count(b"HTTP/1.1 200 OK") == 3 and data.count(b'{"exitCode":0}') == 2,
          "keep-alive and pipelined requests")


def test_files(a):
    blob = os.urandom(700 * 1024) + b"\0\r\n\xff"
    path = os.path.join(a.tmp, "deep/er/file.bin")
    st, _, _ = a.req("POST", "/files?path=" + path, blob)
    check(st == 204, "POST /files 204 creating parents")
    st, h, body = a.req("GET", "/files?path=" + path)
    check(st == 200 and body == blob and h.get("content-type") == "application/octet-stream",
          "GET /files round trip")
    st, _, _ = a.req("GET", "/files?path=" + path + ".missing")
    check(st == 404, "GET missing 404")
    st, _, _ = a.req("DELETE", "/files?path=" + path + ".missing")
    check(st == 204, "DELETE missing 204")
    st, _, _ = a.req("DELETE", "/files?path=" + path)
    check(st == 204 and not os.path.exists(path), "DELETE removes")
    st, _, _ = a.req("PATCH", "/files?path=" + path)
    check(st == 405, "PATCH 405")
    st, _, _ = a.req("GET", "/files")
    check(st == 400, "no path 400")
    # chunked upload
    c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
    c.request("POST", "/files?path=" + path, body=iter([b"ab", b"", b"cd" * 1000]),
              encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    r = c.getresponse()
    r.read()
    c.close()
    check(r.status == 204 and open(path, "rb").read() == b"ab" + b"cd" * 1000, "chunked upload")


def read_some_ndjson(a, path, nbytes):
    """Reads NDJSON from path until at least nbytes decoded, then drops the connection."""
    s = socket.create_connection(("127.0.0.1", a.port))
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    f = s.makefile("rb")
    line = f.readline()
    assert line.startswith(b"HTTP/1.1 200"), line
    while f.readline() not in (b"\r\n", b""):
        pass
    got = b""
    while len(got) < nbytes:
        size = int(f.readline().strip(), 16)
        chunk = f.read(size)
        f.read(2)
        for l in chunk.split(b"\n"):
            if l:
                fr = json.loads(l)
                if "data" in fr:
                    got += base64.b64decode(fr["data"])
    s.close()
    return got


def test_runs(a):
    st, h, body = a.req("POST", "/runs", {"cmd": "for i in $(seq 1 300); do echo line$i; "
                                                 "sleep 0.005; done; echo end >&2; exit 5"})
    check(st == 201, "run started")
    rid = json.loads(body)["id"]
    first = read_some_ndjson(a, "/runs/%s/output?offset=0" % rid, 100)
    check(len(first) >= 100, "read part of the output, then went away")
    st, _, body = a.req("GET", "/runs/%s/output?offset=%d" % (rid, len(first)))
    fr = frames(body)
    rest = b"".join(base64.b64decode(f["data"]) for f in fr if "data" in f)
    expected = b"".join(b"line%d\n" % i for i in range(1, 301)) + b"end\n"
    check(first + rest == expected, "re-attach: output complete, ordered, nothing duplicated")
    check(fr[-1] == {"exitCode": 5}, "re-attach ends with the exit code")
    st, _, body = a.req("GET", "/runs/" + rid)
    j = json.loads(body)
    check(j["state"] == "exited" and j["exitCode"] == 5 and j["outputBytes"] == len(expected),
          "run status")
    # offsets anywhere, including mid-record
    st, _, body = a.req("GET", "/runs/%s/output?offset=3&follow=0" % rid)
    fr = frames(body)
    check(b"".join(base64.b64decode(f["data"]) for f in fr if "data" in f) == expected[3:],
          "offset inside a record")
    st, _, _ = a.req("GET", "/runs/%s/output?offset=999999" % rid)
    check(st == 416, "offset past the end 416")
    # signals
    st, _, body = a.req("POST", "/runs", {"cmd": "sleep 300"})
    rid2 = json.loads(body)["id"]
    st, _, _ = a.req("POST", "/runs/%s/signal" % rid2, {"signal": "TERM"})
    check(st == 204, "signal accepted")
    st, _, body = a.req("GET", "/runs/%s/output" % rid2)
    check(frames(body)[-1] == {"exitCode": 143}, "TERM -> 143")
    st, _, _ = a.req("POST", "/runs/%s/signal?signal=BOGUS" % rid2)
    check(st in (400, 409), "bad signal / ended run refused")
    st, _, _ = a.req("DELETE", "/runs/" + rid2)
    check(st == 204, "run deleted")
    st, _, _ = a.req("GET", "/runs/" + rid2)
    check(st == 404, "deleted run is gone")
    st, _, body = a.req("POST", "/runs", {"cmd": "sleep 300", "timeoutMs": 300})
    rid3 = json.loads(body)["id"]
    st, _, body = a.req("GET", "/runs/%s/output" % rid3)
    check(frames(body)[-1] == {"timeout": True}, "run timeout frame")
    # a tag starts the command once: a second start with it answers the first run
    st, _, body = a.req("POST", "/runs", {"cmd": "echo tagged-once", "tag": "job-7:2"})
    check(st == 201, "tagged run started")
    rid4 = json.loads(body)["id"]
    check(wait_until(lambda: json.loads(a.req("GET", "/runs/" + rid4)[2])["state"] == "exited"),
          "tagged run ended")
    st, _, body = a.req("POST", "/runs", {"cmd": "echo tagged-twice", "tag": "job-7:2"})
    j = json.loads(body)
    check(st == 200 and j["id"] == rid4 and j.get("existing") is True,
          "same tag answers the kept run, not a new one")
    st, _, body = a.req("GET", "/runs/%s/output" % rid4)
    check(b"tagged-twice" not in body and json.loads(a.req("GET", "/runs/" + rid4)[2])["tag"] ==
          "job-7:2", "the command ran once and the status names its tag")
    for bad in ("", "a b", "x" * 201, 5):
        st, _, _ = a.req("POST", "/runs", {"cmd": "true", "tag": bad})
        check(st == 400, "bad tag %r refused" % (bad,))
    check("run-tags" in json.loads(a.req("GET", "/ready")[2])["capabilities"], "run-tags advertised")


def test_runs_spool_bound(tmp_agent_env):
    a = Agent({"SANDBOX_AGENT_SPOOL_MAX_BYTES": "65536"})
    try:
        st, _, body = a.req("POST", "/runs", {"cmd": "head -c 1000000 /dev/zero"})
        rid = json.loads(body)["id"]
        check(wait_until(lambda: json.loads(a.req("GET", "/runs/" + rid)[2])["state"] ==
                         "exited"), "bounded spool: run ended")
        st, _, body = a.req("GET", "/runs/%s/output" % rid)
        fr = frames(body)
        skipped = sum(f["skipped"] for f in fr if "skipped" in f)
        data = b"".join(base64.b64decode(f["data"]) for f in fr if "data" in f)
        check(skipped > 0 and skipped + len(data) == 1000000 and data == b"\0" * len(data),
              "bounded spool: skipped + kept == total")
        st, _, body = a.req("GET", "/runs/" + rid)
        j = json.loads(body)
        check(j["outputBytes"] == 1000000 and
              j["outputBytes"] - j["earliestOffset"] <= 65536 + 300000,
              "bounded spool keeps about the bound (%r)" % j)
        check(fr[-1] == {"exitCode": 0}, "bounded spool exit frame")
    finally:
        a.stop()


def make_tar(path, entries):
    with tarfile.open(path, "w") as t:
        for e in entries:
            ti = tarfile.TarInfo(e[0])
            ti.type = e[1]
            if e[1] in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                ti.linkname = e[2]
                t.addfile(ti)
            else:
                d = e[2].encode() if len(e) > 2 else b""
                ti.size = len(d)
                t.addfile(ti, io.BytesIO(d))


def tree(root):
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                out[rel] = ("file", st.st_mode & 0o7777, open(p, "rb").read())
    return out


def test_archives(a):
    src = os.path.join(a.tmp, "src")
    os.makedirs(os.path.join(src, "app/sub"))
    os.makedirs(os.path.join(src, "node_modules/pkg"))
    os.makedirs(os.path.join(src, "empty"))
    open(os.path.join(src, "app/main.py"), "w").write("print(1)\n")
    open(os.path.join(src, "app/sub/data.bin"), "wb").write(os.urandom(300000))
    open(os.path.join(src, "app/sub/x.o"), "w").write("obj")
    open(os.path.join(src, "node_modules/pkg/i.js"), "w").write("js")
    open(os.path.join(src, "run.sh"), "w").write("#!/bin/sh\n")
    os.chmod(os.path.join(src, "run.sh"), 0o750)
    os.chmod(os.path.join(src, "empty"), 0o700)
    os.symlink("app/main.py", os.path.join(src, "link"))
    for comp in ("zstd", "gzip", "none"):
        st, h, body = a.req("POST", "/archive/out", {"root": src, "exclude": ["node_modules",
                                                                            "*.o"],
                                                     "compression": comp})
        check(st == 200, "archive out %s" % comp)
        dst = os.path.join(a.tmp, "dst-" + comp)
        st, _, rbody = a.req("POST", "/archive/in?path=" + dst, body)
        check(st == 200, "archive in %s (%r)" % (comp, rbody))
        want = {k: v for k, v in tree(src).items()
                if not k.startswith("node_modules") and not k.endswith(".o")}
        check(tree(dst) == want, "archive round trip %s: content, modes, symlinks" % comp)
    st, _, body = a.req("POST", "/archive/out", {"root": src, "paths": ["app"],
                                                 "include": ["*.py"]})
    dst = os.path.join(a.tmp, "dst-inc")
    a.req("POST", "/archive/in?path=" + dst, body)
    check(sorted(tree(dst)) == ["app", "app/main.py"], "include selects (%r)" % sorted(tree(dst)))
    st, _, _ = a.req("POST", "/archive/out", {"root": src, "paths": ["../etc"]})
    check(st == 400, "archive out refuses ..")
    st, _, _ = a.req("POST", "/archive/out", {"root": "/no/such/root"})
    check(st == 404, "archive out missing root 404")


def test_malicious_archives(a):
    d = os.path.join(a.tmp, "mal")
    os.makedirs(d)
    outside = os.path.join(d, "outside")
    os.makedirs(outside)
    cases = {
        "dotdot": [("../evil", tarfile.REGTYPE, "x")],
        "dotdot_deep": [("a/../../evil", tarfile.REGTYPE, "x")],
        "absolute": [(os.path.join(outside, "evil"), tarfile.REGTYPE, "x")],
        "symlink_abs": [("l", tarfile.SYMTYPE, outside), ("l/evil", tarfile.REGTYPE, "x")],
        "symlink_rel": [("l", tarfile.SYMTYPE, "../outside"), ("l/evil", tarfile.REGTYPE, "x")],
        "hardlink": [("h", tarfile.LNKTYPE, "../outside/evil")],
        "chardev": [("dev", tarfile.CHRTYPE)],
        "fifo": [("fifo", tarfile.FIFOTYPE)],
    }
    for name, entries in cases.items():
        tp = os.path.join(d, name + ".tar")
        make_tar(tp, entries)
        target = os.path.join(d, "t-" + name)
        st, _, body = a.req("POST", "/archive/in?path=" + target, open(tp, "rb").read())
        check(st == 400, "malicious %s refused (%d %r)" % (name, st, body))
        check(os.listdir(outside) == [] and not os.path.exists(os.path.join(d, "evil")),
              "malicious %s wrote nothing outside" % name)
    # allowed external symlink is created but never written through
    tp = os.path.join(d, "ext.tar")
    make_tar(tp, [("l", tarfile.SYMTYPE, outside), ("l/evil", tarfile.REGTYPE, "x")])
    st, _, _ = a.req("POST", "/archive/in?path=%s/t-ext&allowExternalSymlinks=1" % d,
                     open(tp, "rb").read())
    check(st in (200, 400) and os.listdir(outside) == [], "external symlink never written through")
    tp = os.path.join(d, "big.tar")
    make_tar(tp, [("big", tarfile.REGTYPE, "y" * 100000)])
    st, _, _ = a.req("POST", "/archive/in?path=%s/t-big&maxBytes=1000" % d, open(tp, "rb").read())
    check(st == 413, "size limit 413")
    st, _, _ = a.req("POST", "/archive/in?path=%s/t-garbage" % d, os.urandom(5000))
    check(st == 400, "garbage archive 400")


def test_auth():
    a = Agent({"SANDBOX_AGENT_TOKEN": "s3cret-token-value"})
    try:
        st, _, _ = a.req("GET", "/ready")
        check(st == 200, "auth: /ready open")
        st, _, _ = a.req("POST", "/aws/lambda-microvms/runtime/v1/ready", port=a.hook_port)
        check(st == 200, "auth: hooks open")
        st, h, _ = a.req("POST", "/exec", {"cmd": "true"})
        check(st == 401 and h.get("www-authenticate") == "Bearer", "auth: no token 401")
        st, _, _ = a.req("POST", "/exec", {"cmd": "true"},
                         headers={"Authorization": "Bearer wrong"})
        check(st == 401, "auth: wrong token 401")
        st, _, _ = a.req("GET", "/files?path=/etc/hostname",
                         headers={"Authorization": "Bearer s3cret-token-valu"})
        check(st == 401, "auth: prefix of the token 401")
        st, _, body = a.req("POST", "/exec", {"cmd": "env"},
                            headers={"Authorization": "Bearer s3cret-token-value"})
        check(st == 200, "auth: right token 200")
        out = b"".join(base64.b64decode(f["data"]) for f in frames(body) if "data" in f)
        check(b"s3cret" not in out, "auth: token not in the commands' environment")
        check("s3cret" not in a.logtext(), "auth: token not logged")
    finally:
        a.stop()


def test_shutdown():
    a = Agent()
    pidfile = os.path.join(a.tmp, "sd.pid")
    st, _, body = a.req("POST", "/runs", {"cmd": "sleep 300 & echo $! > %s; wait" % pidfile})
    check(wait_until(lambda: os.path.exists(pidfile) and os.path.getsize(pidfile) > 0),
          "shutdown: run started")
    pid = int(open(pidfile).read())
    t0 = time.time()
    rc = a.stop()
    check(rc == 0 and time.time() - t0 < 15, "SIGTERM: clean exit (rc %r)" % rc)
    check(wait_until(lambda: pid_gone(pid), 10), "SIGTERM: children killed")
    check(not os.path.exists(os.path.join(a.tmp, "spool")), "SIGTERM: spool removed")


def run_all():
    a = Agent()
    tests = [test_ready_and_hooks, test_exec_framing, test_exec_binary, test_exit_codes,
             test_timeout_kills_group, test_disconnect_kills, test_env_cwd, test_bad_requests,
             test_keepalive_pipelining, test_files, test_runs, test_archives,
             test_malicious_archives]
    try:
        for t in tests:
            print("--", t.__name__, flush=True)
            try:
                t(a)
            except Exception as e:  # a crash in one test is a failure, not the end
                FAILS.append("%s raised %r" % (t.__name__, e))
                print("FAIL: %s raised %r" % (t.__name__, e), flush=True)
    finally:
        rc = a.stop()
        check(rc == 0, "agent exit status 0 after SIGTERM (got %r)" % rc)
    for t in (test_runs_spool_bound, test_auth, test_shutdown):
        print("--", t.__name__, flush=True)
        try:
            t(None) if t is test_runs_spool_bound else t()
        except Exception as e:
            FAILS.append("%s raised %r" % (t.__name__, e))
            print("FAIL: %s raised %r" % (t.__name__, e), flush=True)


def on_signal(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main():
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally below still runs
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        run_all()
    except BaseException as e:
        FAILS.append("black-box run aborted: %r" % e)
        print("FAIL: black-box run aborted: %r" % e, flush=True)
    finally:
        for ag in AGENTS:
            try:
                ag.stop()
                if FAILS and ag.log is not None:  # the logs go with the directories
                    print("log tail of the agent on port %d:\n%s" %
                          (ag.port, "\n".join(ag.logtext().splitlines()[-30:])), flush=True)
                ag.cleanup()
            except Exception as e:  # keep removing the others
                print("cleanup of %s: %r" % (ag.tmp, e), flush=True)
    print("agent black-box: %d checks passed, %d failed" % (PASSES, len(FAILS)))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
