#!/usr/bin/env bash
# The province cascade on one machine: three nodes joined by QUIC trunks — a province, a city
# under it and a township under the city — each with a certificate of a province CA made here.
# A test-pattern camera (`demo-cam`) and a simulated field tablet (`off-demo`) publish at the
# township; the province's video wall lists them under "节点 township" and plays them on demand,
# pulled over two trunks (docs/trunk.md). Prints the wall links and the commands to look at the
# trunks. Ctrl-C stops everything.
#
# Environment:
#   YIWANG_DEMO_DIR    working directory (CA, data dirs, logs)   default /tmp/yiwang-province
#   YIWANG_ADVERTISE   IP put in ICE candidates / printed links  default: first of `hostname -I`, else 127.0.0.1
#
# Ports (all nodes on this machine): province http 8080, media 8443, quic 4433, trunk 4434;
# city 8081, 8444, 4435, trunk 4436; township 8082, 8445, 4437, trunk dials out only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

dir=${YIWANG_DEMO_DIR:-/tmp/yiwang-province}
advertise=${YIWANG_ADVERTISE:-$(hostname -I 2>/dev/null | awk '{print $1}' || true)}
advertise=${advertise:-127.0.0.1}

bash scripts/install-deps.sh
cargo --version >/dev/null || { echo "demo-province.sh: cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
cargo build --release -p media-server -p yiwang-tests -p field-client --bins
bin="$root/target/release"

mkdir -p "$dir"
# The province CA and one certificate per node: made once, kept (ca.key never leaves $dir/ca).
if [ ! -f "$dir/ca/ca.key" ]; then
  "$bin/media-server" ca init --dir "$dir/ca" --name "yiwang demo province CA" >/dev/null
fi
for n in province city township; do
  [ -f "$dir/certs/$n.pem" ] || "$bin/media-server" ca issue "$n" --dir "$dir/ca" --out "$dir/certs" >/dev/null
done

# node NAME HTTP MEDIA QUIC TRUNK_LISTEN PARENT: writes NAME.toml.
node_config() {
  local name=$1 http=$2 media=$3 quic=$4 listen=$5 parent=$6
  {
    echo "[node]"
    echo "id = \"$name\""
    echo "data_dir = \"$dir/$name\""
    echo "[http]"
    echo "listen = \"0.0.0.0:$http\""
    echo "[media]"
    echo "listen = \"0.0.0.0:$media\""
    echo "advertise = \"$advertise\""
    echo "[quic]"
    echo "listen = \"0.0.0.0:$quic\""
    echo "[trunk]"
    [ -n "$listen" ] && echo "listen = \"0.0.0.0:$listen\""
    [ -n "$parent" ] && echo "parent = \"$parent\""
    echo "ca = \"$dir/ca/ca.pem\""
    echo "cert = \"$dir/certs/$name.pem\""
    echo "key = \"$dir/certs/$name.key\""
  } >"$dir/$name.toml"
}
node_config province 8080 8443 4433 4434 ""
node_config city 8081 8444 4435 4436 "127.0.0.1:4434"
node_config township 8082 8445 4437 "" "127.0.0.1:4436"

# shellcheck source=scripts/demo-lib.sh
source scripts/demo-lib.sh

for n in province city township; do
  : >"$dir/$n.out"
  echo "demo-province.sh: starting node $n" >&2
  "$bin/media-server" --config "$dir/$n.toml" >"$dir/$n.out" 2>"$dir/$n.log" &
  pids+=($!)
  wait_line "$dir/$n.out" '^ready ' "${pids[-1]}" 30 "node $n"
done
token() { "$bin/media-server" token --data "$dir/$1" --sub "$2" --role "$3" --ttl 86400; }

: >"$dir/demo-publisher.out"
echo "demo-province.sh: publishing demo-cam at the township" >&2
"$bin/demo-publisher" --url "http://$advertise:8082" --stream demo-cam --token "$(token township demo-cam device)" \
  >"$dir/demo-publisher.out" 2>"$dir/demo-publisher.log" &
pids+=($!)
wait_line "$dir/demo-publisher.out" '^publishing demo-cam' "${pids[-1]}" 60 demo-publisher

: >"$dir/field-client.out"
echo "demo-province.sh: starting a simulated field tablet (off-demo) at the township" >&2
"$bin/field-client" run --json --node "$advertise:4437" --token "$(token township off-demo officer)" --source test \
  --position fixed:30.5928,114.3055 >"$dir/field-client.out" 2>"$dir/field-client.log" &
pids+=($!)
wait_line "$dir/field-client.out" '"kind":"connected"' "${pids[-1]}" 30 field-client

# The township's streams climb two trunks in the catalog: wait until the province lists them.
ops=$(token province demo-operator operator)
admin=$(token province demo-admin admin)
for _ in $(seq 100); do
  if curl -fsS -H "Authorization: Bearer $ops" "http://127.0.0.1:8080/api/streams" | grep -q '"township/demo-cam"'; then break; fi
  sleep 0.1
done
curl -fsS -H "Authorization: Bearer $ops" "http://127.0.0.1:8080/api/streams" | grep -q '"township/demo-cam"' \
  || { echo "demo-province.sh: the province never listed township/demo-cam; see $dir/*.log" >&2; exit 1; }
view=$(token province demo-viewer viewer)

cat <<EOF

  一网 yiwang — the province cascade is running.  省级级联演示已启动。

  province ──trunk── city ──trunk── township (demo-cam, off-demo publish here)

  The province's video wall (operator): the township's streams are listed under "节点 township";
  click one or drag it onto a tile and it is pulled over the two trunks:
    http://$advertise:8080/?token=$ops

  One stream straight from the province (WHEP player):
    http://$advertise:8080/play.html?stream=township/demo-cam&token=$view

  The township's own wall (both streams local there):
    http://$advertise:8082/?token=$(token township demo-operator operator)

  The trunks, routes and round-trip times at each node (admin tokens show the addresses too):
    curl -H "Authorization: Bearer $admin" http://127.0.0.1:8080/api/trunks
    curl -H "Authorization: Bearer $(token city demo-admin admin)" http://127.0.0.1:8081/api/trunks

  Cut the city off for a moment (kill -STOP / -CONT its process, ${pids[1]}): the province's
  tile stalls, then plays again once the trunk is back, with the same session.

  CA, certificates, configs and logs: $dir (Ctrl-C stops everything / 按 Ctrl-C 停止)

EOF

set +e
wait -n "${pids[@]}"
rc=$?
set -e
echo "demo-province.sh: a process exited (status $rc); stopping. Logs: $dir" >&2
tail -n 5 "$dir"/*.log >&2 || true
exit 1
