#!/usr/bin/env bash
# THE demo command: builds the node, the GStreamer test-pattern publisher, field-client and
# drone-bridge, starts a node on this machine, publishes stream `demo-cam`, starts a simulated field
# tablet (`field-client run` as officer `off-demo` publishing a test pattern as stream `off-demo`,
# reporting a position and printing the orders it gets) and a simulated drone (drone-bridge's
# pymavlink vehicle flying a slow circle near the tablet, its RTSP test camera, and drone-bridge
# with pilot `pilot-demo`'s token and a MAVLink 2 signing key: drone `pilot-demo-drone1` on the map
# and the wall, answering a commander's RTL/hold/land/guided), and prints the links of the video
# wall and the players. Ctrl-C stops everything.
#
# Environment:
#   YIWANG_DEMO_DIR    working directory (data dir, logs)      default /tmp/yiwang-demo
#   YIWANG_ADVERTISE   IP put in ICE candidates / printed link  default: first of `hostname -I`, else 127.0.0.1
#   YIWANG_DEMO_CODEC  codec of the demo publisher (h264|vp8)   default: the publisher's default
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

demo_dir=${YIWANG_DEMO_DIR:-/tmp/yiwang-demo}
advertise=${YIWANG_ADVERTISE:-$(hostname -I 2>/dev/null | awk '{print $1}' || true)}
advertise=${advertise:-127.0.0.1}
http_port=8080
stream=demo-cam

bash scripts/install-deps.sh
cargo --version >/dev/null || { echo "demo.sh: cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
cargo build --release -p media-server -p yiwang-tests -p field-client -p drone-bridge --bins

bin="$root/target/release"
mkdir -p "$demo_dir/data"
node_out="$demo_dir/media-server.out"
node_log="$demo_dir/media-server.log"
pub_out="$demo_dir/demo-publisher.out"
pub_log="$demo_dir/demo-publisher.log"
tab_out="$demo_dir/field-client.out"
tab_log="$demo_dir/field-client.log"
cam_out="$demo_dir/rtsp-camera.out"
cam_log="$demo_dir/rtsp-camera.log"
bridge_out="$demo_dir/drone-bridge.out"
bridge_log="$demo_dir/drone-bridge.log"
veh_out="$demo_dir/vehicle.out"
veh_log="$demo_dir/vehicle.log"
: >"$node_out"; : >"$pub_out"; : >"$tab_out"; : >"$cam_out"; : >"$bridge_out"; : >"$veh_out"

# shellcheck source=scripts/demo-lib.sh
source scripts/demo-lib.sh

echo "demo.sh: starting media-server (advertise $advertise), logs in $demo_dir" >&2
"$bin/media-server" --data "$demo_dir/data" \
  --http "0.0.0.0:$http_port" --media 0.0.0.0:8443 --quic 0.0.0.0:4433 \
  --advertise "$advertise" >"$node_out" 2>"$node_log" &
pids+=($!)
wait_line "$node_out" '^ready ' "${pids[0]}" 30 media-server
grep -E '^ready ' "$node_out" | head -n 1 >&2

pub_token=$("$bin/media-server" token --data "$demo_dir/data" --sub "$stream" --role device)
view_token=$("$bin/media-server" token --data "$demo_dir/data" --sub demo-viewer --role viewer --ttl 86400)

codec_args=()
if [ -n "${YIWANG_DEMO_CODEC:-}" ]; then codec_args=(--codec "$YIWANG_DEMO_CODEC"); fi
echo "demo.sh: starting demo-publisher on stream $stream" >&2
# Publish through the advertised address, as a remote camera would: a publisher on loopback would
# send its ICE checks from 127.0.0.1 to the advertised IP and get the answers from another address.
"$bin/demo-publisher" --url "http://$advertise:$http_port" --stream "$stream" --token "$pub_token" \
  "${codec_args[@]}" >"$pub_out" 2>"$pub_log" &
pids+=($!)
wait_line "$pub_out" "^publishing $stream" "${pids[1]}" 60 demo-publisher

tab_token=$("$bin/media-server" token --data "$demo_dir/data" --sub off-demo --role officer --ttl 86400)
ops_token=$("$bin/media-server" token --data "$demo_dir/data" --sub demo-operator --role operator --ttl 86400)
echo "demo.sh: starting a simulated field tablet (field-client run as off-demo)" >&2
# Like the publisher, through the advertised address (the node's ICE candidate), as a tablet would.
"$bin/field-client" run --json --node "$advertise:4433" --token "$tab_token" --source test \
  --position fixed:30.5928,114.3055 >"$tab_out" 2>"$tab_log" &
pids+=($!)
wait_line "$tab_out" '"kind":"connected"' "${pids[2]}" 30 field-client

# The simulated drone. The camera and the vehicle run until their stdin closes: give them one that
# stays open as long as this script runs (a FIFO held open read-write on fd 3).
drone=pilot-demo-drone1
rm -f "$demo_dir/sim.in"; mkfifo "$demo_dir/sim.in"; exec 3<>"$demo_dir/sim.in"
echo "demo.sh: starting a simulated drone: RTSP test camera, drone-bridge (pilot-demo), pymavlink vehicle" >&2
/usr/bin/python3 drone-bridge/tests/rtsp_camera.py 0 <&3 >"$cam_out" 2>"$cam_log" &
pids+=($!)
wait_line "$cam_out" '"kind": "ready"' "${pids[3]}" 30 rtsp-camera
cam_uri=$(sed -n 's/.*"uri": "\([^"]*\)".*/\1/p' "$cam_out" | head -n 1)
# The MAVLink 2 signing key shared by the bridge and the vehicle: made once, kept.
key_file="$demo_dir/drone.key"
[ -s "$key_file" ] || (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$key_file")
pilot_token=$("$bin/media-server" token --data "$demo_dir/data" --sub pilot-demo --role pilot --ttl 86400)
"$bin/drone-bridge" --mavlink udpin:127.0.0.1:0 --node "$advertise:4433" --token "$pilot_token" \
  --signing-key "$key_file" >"$bridge_out" 2>"$bridge_log" &
pids+=($!)
wait_line "$bridge_out" '"kind":"started"' "${pids[4]}" 30 drone-bridge
mavlink=$(sed -n 's/.*"kind":"started".*"mavlink":"\([^"]*\)".*/\1/p' "$bridge_out" | head -n 1)
# A quadcopter 60 m above home, circling 150 m around a point 1 km north of the tablet every 2 min.
"$root/target/venv/bin/python" drone-bridge/tests/vehicle.py --connect "udpout:$mavlink" \
  --key "$(cat "$key_file")" --rate 10 --video "$cam_uri" \
  --lat 30.6018 --lon 114.3055 --alt-rel 60 --circle 150 --period 120 <&3 >"$veh_out" 2>"$veh_log" &
pids+=($!)
wait_line "$bridge_out" '"kind":"publishing"' "${pids[4]}" 60 drone-bridge
cmd_token=$("$bin/media-server" token --data "$demo_dir/data" --sub demo-commander --role commander --ttl 86400)

cat <<EOF

  一网 yiwang demo is running.  演示已启动。

  The video wall (operator; both streams, the map, orders, chat, SOS):
    http://$advertise:$http_port/?token=$ops_token

  Open http://$advertise:$http_port/play.html?stream=$stream&token=$view_token

  The simulated tablet's camera (a test pattern, published by field-client):
    http://$advertise:$http_port/play.html?stream=off-demo&token=$view_token

  The simulated drone's camera (an RTSP test camera, forwarded by drone-bridge):
    http://$advertise:$http_port/play.html?stream=$drone&token=$view_token

  The video wall as a commander (may send the drone RTL, hold, land, guided from its overlay):
    http://$advertise:$http_port/?token=$cmd_token

  Started: media-server, demo-publisher ($stream), field-client run (off-demo, test pattern, fixed
  position), rtsp_camera.py ($cam_uri), drone-bridge (pilot-demo, MAVLink on $mavlink, signing
  key $key_file), vehicle.py (pymavlink ArduCopter, sysid 1, circling at 60 m).

  The simulated tablet (off-demo) and drone ($drone) are on the map data:
    curl -H "Authorization: Bearer $ops_token" http://$advertise:$http_port/api/units
  Send it an order (it prints it in $tab_out):
    curl -H "Authorization: Bearer $ops_token" -d '{"incident":"duty","to":"off-demo","text":"Go to gate 3"}' \
      http://$advertise:$http_port/api/orders

  (viewer and operator tokens valid 24 h; logs: $demo_dir/*.log; Ctrl-C stops everything / 按 Ctrl-C 停止)

EOF

# Run until Ctrl-C, or until one of the children dies.
set +e
wait -n "${pids[@]}"
rc=$?
set -e
echo "demo.sh: a process exited (status $rc); stopping. Logs: $demo_dir" >&2
tail -n 5 "$node_log" "$pub_log" "$tab_log" "$cam_log" "$bridge_log" "$veh_log" >&2 || true
exit 1
