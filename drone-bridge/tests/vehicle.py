#!/usr/bin/env python3
"""Test peers for drone-bridge, written with pymavlink (run from the venv the tests create).

--role vehicle: a synthetic ArduCopter. Sends HEARTBEAT (1 Hz), GLOBAL_POSITION_INT, ATTITUDE,
BATTERY_STATUS (50 Hz each, or --rate) and VIDEO_STREAM_INFORMATION (1 Hz, from the camera
component 100). Where it is: --lat/--lon (default 30.5, 114.3) at --alt-rel metres above home
(default 30; home is 22 m AMSL); without --circle the latitude wobbles by 0.0001 degrees, with
--circle 0 it hovers exactly there, with --circle R it flies a circle of R metres around that
point once every --period seconds (ground speed and heading to match, also in VFR_HUD). After an
RTL it reports mode RTL.
With --key HEX it signs what it sends and checks the signature of every command it receives with
that key itself (SHA-256 over key + frame up to the signature, first 48 bits), then ACKs.
With --accept-unsigned as well, unsigned frames are parsed too, so that every command that
reaches the vehicle is reported (with signed/verified false) — the way to see a leak.
--role gcs: a ground station. Sends a GCS HEARTBEAT (1 Hz) and counts what it receives.

Both print JSON lines on stdout and obey lines on stdin:
  stop       stop sending (the vehicle falls silent)
  start      send again
  wrongkey   sign with a different key from now on
  rtl SYSID  (gcs) send MAV_CMD_NAV_RETURN_TO_LAUNCH to SYSID through the bridge
  arm SYSID N  (gcs) send MAV_CMD_COMPONENT_ARM_DISARM (arm) to SYSID, N times
  quit       exit
"""
import argparse
import hashlib
import json
import math
import os
import sys
import threading
import time

os.environ.setdefault("MAVLINK20", "1")
os.environ.setdefault("MAVLINK_DIALECT", "ardupilotmega")
from pymavlink import mavutil  # noqa: E402

lock = threading.Lock()


def emit(**kv):
    with lock:
        sys.stdout.write(json.dumps(kv) + "\n")
        sys.stdout.flush()


def check_signature(key, buf):
    """True when the frame's signature matches key (independently of pymavlink)."""
    if len(buf) < 13 or buf[0] != 0xFD or not (buf[2] & 0x01):
        return False
    return hashlib.sha256(key + buf[:-6]).digest()[:6] == buf[-6:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["vehicle", "gcs"], default="vehicle")
    ap.add_argument("--connect", required=True, help="pymavlink connection string, e.g. udpout:127.0.0.1:14550")
    ap.add_argument("--sysid", type=int, default=1)
    ap.add_argument("--key", default=None, help="64 hex characters")
    ap.add_argument("--accept-unsigned", action="store_true",
                    help="with --key: parse unsigned frames too (and report them unverified)")
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--video", default="", help="URI for VIDEO_STREAM_INFORMATION")
    ap.add_argument("--lat", type=float, default=30.5)
    ap.add_argument("--lon", type=float, default=114.3)
    ap.add_argument("--alt-rel", type=float, default=30.0, help="metres above home")
    ap.add_argument("--circle", type=float, default=None, help="radius in metres (0: hover)")
    ap.add_argument("--period", type=float, default=120.0, help="seconds per circle")
    args = ap.parse_args()

    vehicle = args.role == "vehicle"
    compid = 1 if vehicle else 190
    conn = mavutil.mavlink_connection(args.connect, source_system=args.sysid, source_component=compid, dialect="ardupilotmega")
    conn.mav.robust_parsing = True
    key = bytes.fromhex(args.key) if args.key else None
    if key:
        # Unsigned frames are refused (no allow_unsigned_callback): only signed commands count.
        unsigned_ok = (lambda mav, msg_id: True) if args.accept_unsigned else None
        conn.setup_signing(key, sign_outgoing=True, link_id=1 if vehicle else 2,
                           allow_unsigned_callback=unsigned_ok)
    cam = None
    if vehicle:
        cam = mavutil.mavlink.MAVLink(conn, srcSystem=args.sysid, srcComponent=100)
        if key:
            cam.signing.secret_key = key
            cam.signing.sign_outgoing = True
            cam.signing.link_id = 3
            cam.signing.timestamp = int((time.time() - 1420070400) * 100000)

    state = {"sending": True, "custom_mode": 4, "quit": False}
    counts = {}

    def stdin_loop():
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "stop":
                state["sending"] = False
            elif words[0] == "start":
                state["sending"] = True
            elif words[0] == "wrongkey":
                wrong = hashlib.sha256(b"wrong").digest()
                conn.mav.signing.secret_key = wrong
                if cam:
                    cam.signing.secret_key = wrong
            elif words[0] == "rtl":
                conn.mav.command_long_send(int(words[1]), 1, mavutil.mavlink.MAV_CMD_NAV_RETURN_TO_LAUNCH, 0, 0, 0, 0, 0, 0, 0, 0)
                emit(kind="sent", command="rtl")
            elif words[0] == "arm":
                for _ in range(int(words[2]) if len(words) > 2 else 1):
                    conn.mav.command_long_send(int(words[1]), 1, mavutil.mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 0, 1, 0, 0, 0, 0, 0, 0)
                emit(kind="sent", command="arm")
            elif words[0] == "quit":
                break
            emit(kind="ok", cmd=words[0])
        state["quit"] = True

    threading.Thread(target=stdin_loop, daemon=True).start()

    def receive():
        while not state["quit"]:
            m = conn.recv_match(blocking=True, timeout=0.2)
            if m is None:
                continue
            t = m.get_type()
            if t == "BAD_DATA":
                continue
            counts[t] = counts.get(t, 0) + 1
            if vehicle and t in ("COMMAND_LONG", "COMMAND_INT") and m.target_system == args.sysid:
                buf = bytes(m.get_msgbuf())
                verified = bool(key) and check_signature(key, buf)
                emit(kind="command", msg=t, command=m.command, signed=bool(getattr(m, "_signed", False)),
                     verified=verified, confirmation=getattr(m, "confirmation", None),
                     sender=[m.get_srcSystem(), m.get_srcComponent()])
                if key and not verified:
                    continue
                if m.command == mavutil.mavlink.MAV_CMD_NAV_RETURN_TO_LAUNCH:
                    state["custom_mode"] = 6
                conn.mav.command_ack_send(m.command, mavutil.mavlink.MAV_RESULT_ACCEPTED)

    threading.Thread(target=receive, daemon=True).start()
    # The local port, for connection strings that listen on port 0 (udpin:HOST:0, tcpin:HOST:0).
    sock = getattr(conn, "listen", None) or getattr(conn, "port", None)
    local = sock.getsockname()[1] if sock is not None and hasattr(sock, "getsockname") else None
    emit(kind="ready", role=args.role, port=local)

    period = 1.0 / args.rate
    n = 0
    last_report = time.monotonic()
    next_t = time.monotonic()
    while not state["quit"]:
        now = time.monotonic()
        if state["sending"]:
            boot_ms = int(n * period * 1000) & 0xFFFFFFFF
            if vehicle:
                if n % int(args.rate) == 0:
                    conn.mav.heartbeat_send(mavutil.mavlink.MAV_TYPE_QUADROTOR, mavutil.mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA,
                                            mavutil.mavlink.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED | mavutil.mavlink.MAV_MODE_FLAG_SAFETY_ARMED,
                                            state["custom_mode"], mavutil.mavlink.MAV_STATE_ACTIVE)
                    cam.video_stream_information_send(1, 1, mavutil.mavlink.VIDEO_STREAM_TYPE_RTSP, 1, 30.0, 640, 480,
                                                      2000, 0, 90, b"camera", args.video.encode())
                alt_rel_mm = int(round(args.alt_rel * 1000))
                if args.circle is None:
                    lat, lon = args.lat + 0.0001 * math.sin(n / 100.0), args.lon
                    vx, vy, hdg = 100, 0, 90.0
                else:
                    # Counter-clockwise seen from above, starting east of the centre.
                    w = 2 * math.pi / args.period
                    a = w * n * period
                    r = args.circle
                    lat = args.lat + math.degrees(r * math.sin(a) / 6371000.0)
                    lon = args.lon + math.degrees(r * math.cos(a) / (6371000.0 * math.cos(math.radians(args.lat))))
                    vn, ve = r * w * math.cos(a), -r * w * math.sin(a)
                    vx, vy = int(round(vn * 100)), int(round(ve * 100))
                    hdg = math.degrees(math.atan2(ve, vn)) % 360.0 if r > 0 else 0.0
                    if n % max(1, int(args.rate / 5)) == 0:
                        conn.mav.vfr_hud_send(r * w, r * w, int(round(hdg)) % 360, 50, args.alt_rel + 22.0, 0.0)
                conn.mav.global_position_int_send(boot_ms, int(round(lat * 1e7)), int(round(lon * 1e7)), alt_rel_mm + 22000,
                                                  alt_rel_mm, vx, vy, 0, int(round(hdg * 100)) % 36000)
                conn.mav.attitude_send(boot_ms, 0.1, -0.05, 1.5, 0, 0, 0)
                volts = [4100, 4100, 4100] + [65535] * 7
                conn.mav.battery_status_send(0, 0, 0, 2500, volts, 1200, -1, -1, 76)
            elif n % int(args.rate) == 0:
                conn.mav.heartbeat_send(mavutil.mavlink.MAV_TYPE_GCS, mavutil.mavlink.MAV_AUTOPILOT_INVALID, 0, 0, 0)
        if now - last_report >= 0.5:
            last_report = now
            emit(kind="counts", counts=dict(counts))
        n += 1
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))
    emit(kind="bye", counts=dict(counts))


if __name__ == "__main__":
    main()
