#!/usr/bin/python3
"""A drone camera for drone-bridge's tests: GStreamer's RTSP server (Python GI; run with Debian's
/usr/bin/python3, python3-gi and gir1.2-gst-rtsp-server-1.0) serving a 640x480 30 fps H.264 test
pattern (pattern=ball: a white ball on black) at rtsp://127.0.0.1:PORT/cam (PORT: the first
argument, default any free one; a second argument "h265" serves H.265 from x265enc instead). H.264
comes in four slices per picture with SPS/PPS repeated before each (x264's sliced threads, on any
number of cores), as multi-core cameras send it. Prints
{"kind":"ready","uri":...} once listening and runs until stdin closes."""
import json
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main():
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(sys.argv[1] if len(sys.argv) > 1 else "0")
    factory = GstRtspServer.RTSPMediaFactory()
    src = "videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=480,framerate=30/1"
    if len(sys.argv) > 2 and sys.argv[2] == "h265":
        enc = ("x265enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=1500 "
               "! rtph265pay name=pay0 pt=96 config-interval=-1")
    else:
        enc = ("x264enc tune=zerolatency threads=4 speed-preset=ultrafast key-int-max=30 bitrate=1500 "
               "! video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=-1")
    factory.set_launch(f"( {src} ! {enc} )")
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    server.attach(None)
    loop = GLib.MainLoop()
    print(json.dumps({"kind": "ready", "uri": f"rtsp://127.0.0.1:{server.get_bound_port()}/cam"}), flush=True)

    def wait_stdin():
        sys.stdin.read()
        GLib.idle_add(loop.quit)

    threading.Thread(target=wait_stdin, daemon=True).start()
    loop.run()


if __name__ == "__main__":
    main()
