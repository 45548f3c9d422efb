#!/usr/bin/env python3
"""Hostile-input tests of sandbox-agent: the real binary on free loopback ports, driven by a
client that lies, stalls, floods or sends crafted archives. One test per finding of the agent
security review. Usage: agent_hostile.py <path-to-sandbox-agent>. Exit status 1 on any failure.
The helpers (Agent, check, ...) are the black-box suite's."""
import gzip
import io
import json
import os
import select
import signal
import socket
import sys
import tarfile
import threading
import time

import agent_blackbox as bb
from agent_blackbox import Agent, check, exec_cmd, wait_until

HOOK = "/aws/lambda-microvms/runtime/v1/"
TOKEN = "hostile-test-token-1234"
AUTH = {"Authorization": "Bearer " + TOKEN}


def raw(port, data, timeout=10):
    """Sends data on a fresh connection, returns everything read until the peer closes."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(data)
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        out += b"<timeout>"
    s.close()
    return out


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


# ---------------------------------------------------------------- 1. hooks


def test_hooks_port_and_envs():
    a = Agent({"SANDBOX_AGENT_TOKEN": TOKEN})
    try:
        # the main port: hooks need the token like everything but /ready
        st, _, _ = a.req("POST", HOOK + "run", {"envs": {"X_MAIN": "1"}})
        check(st == 401, "hooks: unauthenticated run hook on the main port refused (got %d)" % st)
        st, _, _ = a.req("POST", HOOK + "run", {"envs": {"X_MAIN": "1"}}, headers=AUTH)
        check(st == 404, "hooks: not served on the main port even with the token (got %d)" % st)
        _, out, _, _ = exec_cmd_auth(a, "echo ${X_MAIN-unset}")
        check(out == b"unset\n", "hooks: main-port hook changed nothing (%r)" % out)
        # the hook port serves hooks and /ready, nothing else
        st, _, _ = a.req("POST", "/exec", {"cmd": "true"}, headers=AUTH, port=a.hook_port)
        check(st == 404, "hooks: /exec not served on the hook port (got %d)" % st)
        st, _, _ = a.req("GET", "/ready", port=a.hook_port)
        check(st == 200, "hooks: /ready on the hook port")
        # sensitive variables are refused, with a clear error, and nothing is applied
        for name, val in (("BASH_ENV", "/tmp/evil.sh"), ("LD_PRELOAD", "/tmp/evil.so"),
                          ("PATH", "/tmp/evil"), ("IFS", "x"), ("ENV", "/tmp/evil.sh"),
                          ("LD_LIBRARY_PATH", "/tmp"), ("BASH_FUNC_true%%", "() { id; }"),
                          ("PYTHONPATH", "/tmp"), ("NODE_OPTIONS", "--require /tmp/x")):
            st, _, body = a.req("POST", HOOK + "run", {"envs": {"SAFE_ONE": "ok", name: val}},
                                port=a.hook_port)
            check(st == 400 and name.encode() in body,
                  "hooks: run hook refuses %s with a clear error (%d %r)" % (name, st, body))
        _, out, _, _ = exec_cmd_auth(a, "echo ${SAFE_ONE-unset} ${BASH_ENV-unset} $PATH")
        check(out.startswith(b"unset unset ") and b"/tmp/evil" not in out,
              "hooks: a refused payload applies nothing (%r)" % out)
        evil = os.path.join(a.tmp, "evil.sh")
        marker = os.path.join(a.tmp, "pwned")
        open(evil, "w").write("touch %s\n" % marker)
        a.req("POST", HOOK + "run", {"envs": {"BASH_ENV": evil}}, port=a.hook_port)
        if os.path.exists("/bin/bash"):
            exec_cmd_auth(a, "bash -c true")
            check(not os.path.exists(marker), "hooks: BASH_ENV from a hook never runs")
        # an ordinary variable still works (AWS run hook payload)
        st, _, body = a.req("POST", HOOK + "run", {"envs": {"HOOK_VAR": "from-hook"}},
                            port=a.hook_port)
        check(st == 200, "hooks: plain variable accepted (%d %r)" % (st, body))
        _, out, _, _ = exec_cmd_auth(a, "echo $HOOK_VAR")
        check(out == b"from-hook\n", "hooks: plain variable reaches commands")
    finally:
        a.stop()


def exec_cmd_auth(a, cmd, **kw):
    body = {"cmd": cmd}
    body.update(kw)
    st, hdrs, data = a.req("POST", "/exec", body, headers=AUTH)
    assert st == 200, (st, data)
    fr = bb.frames(data)
    import base64
    out = b"".join(base64.b64decode(f["data"]) for f in fr if f.get("stream") == "stdout")
    return fr, out, b"", hdrs


# ---------------------------------------------------------------- 2. unread replies


def test_pipeline_flood():
    a = Agent({"LIGHTDASH_LOG_LEVEL": "info"})
    try:
        rss0 = rss_kib(a.proc.pid)
        s = socket.create_connection(("127.0.0.1", a.port))
        s.setblocking(False)
        req = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n" * 4096
        sent = 0
        end = time.time() + 4
        while time.time() < end:
            _, w, _ = select.select([], [s], [], 0.2)
            if not w:
                continue
            try:
                sent += s.send(req)
            except BlockingIOError:
                pass
        rss1 = rss_kib(a.proc.pid)
        logsize = len(a.logtext())
        s.close()
        grew = (rss1 - rss0) // 1024
        print("   flood: sent %d MiB of requests, agent RSS +%d MiB, log %d KiB" %
              (sent >> 20, grew, logsize >> 10), flush=True)
        check(grew < 64, "flood: agent memory bounded while the client never reads (+%d MiB)" % grew)
        check(logsize < 256 * 1024, "flood: log bounded (%d bytes)" % logsize)
        check(wait_until(lambda: a.req("GET", "/ready", timeout=5)[0] == 200, 10),
              "flood: agent answers afterwards")
    finally:
        a.stop()


# ---------------------------------------------------------------- 3. slow headers, idle


def test_slow_headers():
    a = Agent({"SANDBOX_AGENT_TOKEN": TOKEN, "SANDBOX_AGENT_MAX_CONNS": "16",
               "SANDBOX_AGENT_HEADER_TIMEOUT_MS": "1500", "SANDBOX_AGENT_IDLE_TIMEOUT_MS": "30000"})
    socks = []
    try:
        # an authenticated keep-alive connection made first keeps working throughout
        import http.client
        trusted = http.client.HTTPConnection("127.0.0.1", a.port, timeout=5)
        trusted.request("POST", "/exec", body=json.dumps({"cmd": "true"}), headers=AUTH)
        r = trusted.getresponse()
        r.read()
        check(r.status == 200, "slow: trusted connection works")
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", a.port))
            s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        time.sleep(0.2)
        t0 = time.time()
        try:
            st, _, _ = a.req("POST", "/exec", {"cmd": "true"}, headers=AUTH, timeout=5)
        except OSError as e:
            st = repr(e)
        check(st == 200 and time.time() - t0 < 1.2,
              "slow: a new client is served while half-sent heads fill the cap (%r)" % (st,))
        try:
            trusted.request("POST", "/exec", body=json.dumps({"cmd": "true"}), headers=AUTH)
            r = trusted.getresponse()
            r.read()
            st = r.status
        except OSError as e:
            st = repr(e)
        check(st == 200, "slow: the trusted connection was not evicted (%r)" % (st,))
        trusted.close()
        # unauthenticated hook bodies trickled forever do not lock the worker out either
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", a.hook_port))
            s.sendall(b"POST " + HOOK.encode() + b"run HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 1000\r\n\r\n{")
            socks.append(s)
        time.sleep(0.2)
        try:
            st, _, _ = a.req("POST", "/exec", {"cmd": "true"}, headers=AUTH, timeout=5)
        except OSError as e:
            st = repr(e)
        check(st == 200, "slow: served while trickled hook bodies fill the cap (%r)" % (st,))
        # the stalled heads are closed by the header timeout
        s = socks[39]  # the newest half-sent head
        s.settimeout(6)
        t0 = time.time()
        try:
            data = s.recv(4096)
        except socket.timeout:
            data = b"<timeout>"
        except OSError:
            data = b""
        check((data == b"" or data.startswith(b"HTTP/1.1 408")) and time.time() - t0 < 5,
              "slow: half-sent head closed by the header timeout (%r)" % data[:40])
    finally:
        for s in socks:
            s.close()
        a.stop()
    a = Agent({"SANDBOX_AGENT_IDLE_TIMEOUT_MS": "800"})
    try:
        s = socket.create_connection(("127.0.0.1", a.port))
        s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        first = s.recv(65536)
        check(first.startswith(b"HTTP/1.1 200"), "idle: first request served")
        t0 = time.time()
        try:
            data = s.recv(4096)
        except socket.timeout:
            data = b"<timeout>"
        check(data == b"" and time.time() - t0 < 4,
              "idle: keep-alive connection closed after the idle timeout (%r)" % data[:40])
        s.close()
    finally:
        a.stop()


# ---------------------------------------------------------------- 4. framing


def test_conflicting_framing():
    a = Agent()
    try:
        smug = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
        resp = raw(a.port, b"POST /exec HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(smug) + smug)
        check(resp.startswith(b"HTTP/1.1 400") and resp.count(b"HTTP/1.1 ") == 1,
              "framing: two Content-Length headers 400, nothing smuggled (%r)" % resp[:60])
        resp = raw(a.port, b"POST /exec HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                   b"Content-Length: 5\r\n\r\nabcde")
        check(resp.startswith(b"HTTP/1.1 400"), "framing: repeated Content-Length 400")
        resp = raw(a.port, b"POST /exec HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                   b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n" + smug)
        check(resp.startswith(b"HTTP/1.1 400") and resp.count(b"HTTP/1.1 ") == 1,
              "framing: a second Transfer-Encoding 400 (%r)" % resp[:60])
        path = os.path.join(a.tmp, "bare-lf")
        resp = raw(a.port, b"POST /files?path=%s HTTP/1.1\r\nHost: x\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n" % path.encode())
        check(resp.startswith(b"HTTP/1.1 400"), "framing: bare-LF chunk lines 400 (%r)" % resp[:60])
        resp = raw(a.port, b"POST /files?path=%s HTTP/1.1\r\nHost: x\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n" % path.encode())
        check(resp.startswith(b"HTTP/1.1 400"), "framing: bare LF after chunk data 400")
        resp = raw(a.port, b"POST /files?path=%s HTTP/1.1\r\nHost: x\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" % path.encode())
        check(resp.startswith(b"HTTP/1.1 204"), "framing: proper chunked body still accepted")
    finally:
        a.stop()


# ---------------------------------------------------------------- 5. symlink chains


def escaping_links(root):
    bad = []
    rroot = os.path.realpath(root)
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            if os.path.islink(p):
                r = os.path.realpath(p)
                if r != rroot and not r.startswith(rroot + "/"):
                    bad.append((os.path.relpath(p, root), os.readlink(p)))
    return bad


def test_symlink_chains():
    a = Agent()
    try:
        base = os.path.join(a.tmp, "chain")
        os.makedirs(os.path.join(base, "outside"))
        victim = os.path.join(base, "outside", "victim")
        open(victim, "w").write("untouched")
        cases = {
            # the reported chain: a -> . makes a/a/a the root, then three ".." leave it
            "dot_chain": [("a", tarfile.SYMTYPE, "."),
                          ("v", tarfile.SYMTYPE, "a/a/a/../../../outside/victim"),
                          ("h", tarfile.LNKTYPE, "v")],
            # the escape only appears once later links exist
            "later_links": [("v", tarfile.SYMTYPE, "b/c/e/../../../outside/victim"),
                            ("b", tarfile.SYMTYPE, "."), ("c", tarfile.SYMTYPE, "."),
                            ("e", tarfile.SYMTYPE, ".")],
            # a hard link whose target path runs through a symlink to the outside
            "hardlink_via_symlink": [("d", tarfile.SYMTYPE, "."),
                                     ("x", tarfile.SYMTYPE, "d/d/d/../../../outside"),
                                     ("h", tarfile.LNKTYPE, "x/victim")],
        }
        for name, entries in cases.items():
            tp = os.path.join(a.tmp, name + ".tar")
            bb.make_tar(tp, entries)
            root = os.path.join(base, "t1", "t2", name)
            st, _, body = a.req("POST", "/archive/in?path=" + root, open(tp, "rb").read())
            check(st == 400, "chain %s refused (%d %r)" % (name, st, body))
            bad = escaping_links(root) if os.path.isdir(root) else []
            check(bad == [], "chain %s: no symlink resolves outside (%r)" % (name, bad))
            check(open(victim).read() == "untouched" and os.listdir(os.path.dirname(victim)) ==
                  ["victim"], "chain %s: outside untouched" % name)
        # a chain that stays inside is fine
        tp = os.path.join(a.tmp, "ok.tar")
        bb.make_tar(tp, [("d/f", tarfile.REGTYPE, "x"), ("a", tarfile.SYMTYPE, "."),
                         ("v", tarfile.SYMTYPE, "a/a/d/../d/f")])
        root = os.path.join(base, "t1", "t2", "ok")
        st, _, body = a.req("POST", "/archive/in?path=" + root, open(tp, "rb").read())
        check(st == 200 and open(os.path.join(root, "v")).read() == "x",
              "chain inside the tree accepted (%d %r)" % (st, body))
    finally:
        a.stop()


# ---------------------------------------------------------------- 6. FIFOs


def unblock_fifo(path, writer):
    """Releases an agent stuck opening or reading the FIFO (a test of the old code)."""
    try:
        fd = os.open(path, (os.O_WRONLY if writer else os.O_RDONLY) | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def test_fifos():
    a = Agent()
    try:
        fifo = os.path.join(a.tmp, "fifo")
        os.mkfifo(fifo)
        for method, body, writer in (("GET", None, True), ("POST", b"data", False)):
            res = {}

            def go():
                try:
                    res["st"] = a.req(method, "/files?path=" + fifo, body, timeout=4)[0]
                except OSError as e:
                    res["st"] = repr(e)

            t = threading.Thread(target=go)
            t.start()
            time.sleep(0.3)
            t0 = time.time()
            try:
                ready = a.req("GET", "/ready", timeout=2)[0]
            except OSError as e:
                ready = repr(e)
            check(ready == 200 and time.time() - t0 < 2,
                  "fifo: agent answers during %s on a FIFO (%r)" % (method, ready))
            t.join(5)
            check(res.get("st") == 400, "fifo: %s refused with 400 (%r)" % (method, res.get("st")))
            for _ in range(3):
                unblock_fifo(fifo, writer)
            t.join(10)
        check(os.path.exists(fifo), "fifo: still a FIFO")
    finally:
        a.stop()


# ---------------------------------------------------------------- 7. caps, hard links, token


def test_extract_caps():
    a = Agent()
    try:
        # 200 MiB of zeros in about 200 KiB of gzip
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as gz:
            with tarfile.open(fileobj=gz, mode="w|") as t:
                ti = tarfile.TarInfo("zeros")
                ti.size = 200 << 20

                class Zeros(io.RawIOBase):
                    left = 200 << 20

                    def readable(self):
                        return True

                    def readinto(self, b):
                        n = min(len(b), self.left)
                        b[:n] = bytes(n)
                        self.left -= n
                        return n

                t.addfile(ti, io.BufferedReader(Zeros(), 1 << 20))
        bomb = buf.getvalue()
        root = os.path.join(a.tmp, "bomb")
        st, _, body = a.req("POST", "/archive/in?path=" + root, bomb)
        written = os.path.getsize(os.path.join(root, "zeros")) if os.path.exists(
            os.path.join(root, "zeros")) else 0
        print("   bomb: %d KiB gzip, %d MiB written, %d %r" % (len(bomb) >> 10, written >> 20, st,
                                                              body[:100]), flush=True)
        check(st == 413 and written < 100 << 20,
              "caps: a %d KiB gzip bomb stops well short of 200 MiB (%d, %d MiB)" %
              (len(bomb) >> 10, st, written >> 20))
        # a hard link carrying data (pax "size" on a link entry) leaves its target alone
        def pad(d):
            return d + b"\0" * ((512 - len(d) % 512) % 512)
        d = b"original-content"
        ti = tarfile.TarInfo("f")
        ti.size = len(d)
        hl = tarfile.TarInfo("h")
        hl.type = tarfile.LNKTYPE
        hl.linkname = "f"
        hl.pax_headers = {"size": "5"}
        tar = (ti.tobuf(tarfile.PAX_FORMAT) + pad(d) + hl.tobuf(tarfile.PAX_FORMAT) +
               pad(b"XXXXX") + b"\0" * 1024)
        root = os.path.join(a.tmp, "hl")
        st, _, body = a.req("POST", "/archive/in?path=" + root, tar)
        got = open(os.path.join(root, "f"), "rb").read() if os.path.exists(
            os.path.join(root, "f")) else None
        check(st == 200 and got == d, "caps: hard link with data does not truncate its target (%d %r %r)" %
              (st, body[:80], got))
    finally:
        a.stop()


def listen_addrs(pid):
    """Local addresses of the listening TCP sockets in the process's network namespace."""
    out = set()
    with open("/proc/%d/net/tcp" % pid) as f:
        for line in f.readlines()[1:]:
            p = line.split()
            if p[3] == "0A":
                ip, port = p[1].split(":")
                out.add((socket.inet_ntoa(bytes.fromhex(ip)[::-1]), int(port, 16)))
    return out


def test_no_token_defaults():
    a = Agent({"LD_AGENT_BIND": ""})
    try:
        log = a.logtext()
        check("warn" in log.lower() and "SANDBOX_AGENT_TOKEN" in log,
              "token: no token is said at warn")
        addrs = {ip for ip, port in listen_addrs(a.proc.pid) if port == a.port}
        check(addrs == {"127.0.0.1"}, "token: without a token it binds loopback (%r)" % addrs)
    finally:
        a.stop()
    a = Agent({"LD_AGENT_BIND": "", "SANDBOX_AGENT_TOKEN": TOKEN})
    try:
        addrs = {ip for ip, port in listen_addrs(a.proc.pid) if port == a.port}
        check(addrs == {"0.0.0.0"}, "token: with a token it binds every address (%r)" % addrs)
    finally:
        a.stop()


def run_all():
    tests = [test_hooks_port_and_envs, test_pipeline_flood, test_slow_headers,
             test_conflicting_framing, test_symlink_chains, test_fifos, test_extract_caps,
             test_no_token_defaults]
    only = os.environ.get("HOSTILE_ONLY")
    for t in tests:
        if only and only not in t.__name__:
            continue
        print("--", t.__name__, flush=True)
        try:
            t()
        except Exception as e:
            bb.FAILS.append("%s raised %r" % (t.__name__, e))
            print("FAIL: %s raised %r" % (t.__name__, e), flush=True)


def main():
    signal.signal(signal.SIGTERM, bb.on_signal)
    signal.signal(signal.SIGHUP, bb.on_signal)
    try:
        run_all()
    except BaseException as e:
        bb.FAILS.append("hostile run aborted: %r" % e)
        print("FAIL: hostile run aborted: %r" % e, flush=True)
    finally:
        for ag in bb.AGENTS:
            try:
                ag.stop()
                if bb.FAILS and ag.log is not None:
                    print("log tail of the agent on port %d:\n%s" %
                          (ag.port, "\n".join(ag.logtext().splitlines()[-15:])), flush=True)
                ag.cleanup()
            except Exception as e:
                print("cleanup of %s: %r" % (ag.tmp, e), flush=True)
    print("agent hostile-input: %d checks passed, %d failed" % (bb.PASSES, len(bb.FAILS)))
    return 1 if bb.FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
