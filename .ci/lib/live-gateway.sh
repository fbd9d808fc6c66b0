# Sourced by the checks that drive a live gateway: starts `waybill simulate`
# and `waybill serve` (the binary in $BIN) on free loopback ports, with the
# default config's partner key, the admin token in $WAYBILL_ADMIN_TOKEN and
# no rate limits, and waits until the gateway is ready. Sets $work (a temp
# dir, holding serve.log and simulate.log), $port and $sim_port; everything
# started is stopped, and $work removed, on exit.

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
sim_port=$(free_port)
port=$(free_port)

"$BIN" simulate --listen "127.0.0.1:$sim_port" >"$work/simulate.log" 2>&1 &
pids+=($!)
sed -e "s|^listen = .*|listen = \"127.0.0.1:$port\"|" \
    -e "s|^path = .*|path = \"$work/data\"|" \
    -e "s|^base_url = .*|base_url = \"http://127.0.0.1:$sim_port\"|" \
    -e "/^rate_limit = /d" \
    config/waybill.toml >"$work/waybill.toml"
"$BIN" serve --config "$work/waybill.toml" >"$work/serve.log" 2>&1 &
pids+=($!)
ready=""
for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; then
        ready=1
        break
    fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    echo "the gateway did not become ready:"
    tail -20 "$work/serve.log"
    exit 1
fi
