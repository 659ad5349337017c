#!/usr/bin/env python3
"""/healthz latency of a release media-server under the listeners attack (issue 16, item 3).

Starts `media-server` (a fresh data dir, loopback, the given [http] timeouts), polls
`GET /healthz` on a fresh connection every 50 ms, first for a few quiet seconds, then while
1,000 idle TCP sockets and 300 slow bodies (150 tokenless to WHIP, 150 with a commander token
to /api/orders, each trickling a byte every 300 ms) come from 127.0.0.1, until the node has
closed them all. Prints the probe's latency (quiet and under attack) and when the node closed
the attacker's sockets. Standard library only.

    cargo build --release -p media-server
    python3 bench/http-flood.py --bin target/release/media-server
"""

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time


async def healthz(host, port):
    t0 = time.monotonic()
    r, w = await asyncio.open_connection(host, port)
    w.write(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
    await w.drain()
    data = await r.read()
    w.close()
    dt = time.monotonic() - t0
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"/healthz answered {data[:40]!r}")
    return dt


async def probe(host, port, stop, out):
    while not stop.is_set():
        try:
            out.append(await asyncio.wait_for(healthz(host, port), 10))
        except Exception as e:  # a lock-out: record it as a 10 s answer
            print(f"/healthz failed: {e!r}", file=sys.stderr)
            out.append(10.0)
        await asyncio.sleep(0.05)


async def idle_socket(host, port):
    r, w = await asyncio.open_connection(host, port)
    t0 = time.monotonic()
    try:
        await r.read(1)
    except ConnectionError:
        pass
    w.close()
    return time.monotonic() - t0


async def slow_body(host, port, path, token):
    r, w = await asyncio.open_connection(host, port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    ct = "application/sdp" if path.startswith("/whip") else "application/json"
    w.write(
        f"POST {path} HTTP/1.1\r\nHost: node\r\nContent-Type: {ct}\r\n"
        f"Content-Length: 60000\r\n{auth}\r\n".encode()
    )
    await w.drain()
    t0 = time.monotonic()

    async def trickle():
        while True:
            await asyncio.sleep(0.3)
            w.write(b"{")
            await w.drain()

    feeder = asyncio.ensure_future(trickle())
    answer = b""
    try:
        while True:
            chunk = await r.read(4096)
            if not chunk:
                break
            answer += chunk
    except ConnectionError:
        pass
    feeder.cancel()
    w.close()
    return answer[9:12].decode(errors="replace"), time.monotonic() - t0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def ms(x):
    return f"{x * 1000:.1f} ms"


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/media-server")
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--slow", type=int, default=300)
    ap.add_argument("--header-timeout", type=int, default=2)
    ap.add_argument("--idle-timeout", type=int, default=2)
    ap.add_argument("--body-timeout", type=int, default=3)
    ap.add_argument("--quiet-secs", type=float, default=3)
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="http-flood-")
    data = os.path.join(tmp, "data")
    cfg = os.path.join(tmp, "node.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[node]\ndata_dir = "{data}"\nid = "flood"\n'
            f'[http]\nlisten = "127.0.0.1:0"\nheader_timeout_secs = {a.header_timeout}\n'
            f"idle_timeout_secs = {a.idle_timeout}\nbody_timeout_secs = {a.body_timeout}\n"
            f'[media]\nlisten = "127.0.0.1:0"\n[quic]\nlisten = "127.0.0.1:0"\n'
        )
    token = subprocess.run(
        [a.bin, "token", "--data", data, "--node-id", "flood", "--sub", "cmd-1",
         "--role", "commander"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    node = subprocess.Popen(
        [a.bin, "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        line = node.stdout.readline()
        m = re.search(r"http=([\d.]+):(\d+)", line)
        if not m:
            raise SystemExit(f"no ready line: {line!r}")
        host, port = m.group(1), int(m.group(2))

        stop = asyncio.Event()
        quiet = []
        p = asyncio.ensure_future(probe(host, port, stop, quiet))
        await asyncio.sleep(a.quiet_secs)
        stop.set()
        await p

        stop = asyncio.Event()
        loud = []
        p = asyncio.ensure_future(probe(host, port, stop, loud))
        t0 = time.monotonic()
        idle = [asyncio.ensure_future(idle_socket(host, port)) for _ in range(a.idle)]
        await asyncio.sleep(0)
        slow = [
            asyncio.ensure_future(
                slow_body(host, port, *(("/whip/cam-slow", None) if i % 2 == 0
                                        else ("/api/orders", token)))
            )
            for i in range(a.slow)
        ]
        idle_closed = await asyncio.gather(*idle)
        answers = await asyncio.gather(*slow)
        attack_secs = time.monotonic() - t0
        stop.set()
        await p
    finally:
        node.terminate()
        node.wait(10)

    codes = {}
    for code, _ in answers:
        codes[code] = codes.get(code, 0) + 1
    by = {c: max(t for k, t in answers if k == c) for c in codes}
    print(f"quiet:  /healthz {len(quiet)} polls, p50 {ms(statistics.median(quiet))}, "
          f"p99 {ms(pct(quiet, 0.99))}, max {ms(max(quiet))}")
    print(f"attack: /healthz {len(loud)} polls over {attack_secs:.1f} s, p50 "
          f"{ms(statistics.median(loud))}, p99 {ms(pct(loud, 0.99))}, max {ms(max(loud))}")
    print(f"idle sockets: {len(idle_closed)} closed by the node, the last after "
          f"{max(idle_closed):.2f} s (header timeout {a.header_timeout} s)")
    print("slow bodies: " + ", ".join(
        f"{n} x {c} (closed by {by[c]:.2f} s)" for c, n in sorted(codes.items())))


if __name__ == "__main__":
    asyncio.run(main())
