#!/usr/bin/env bash
# bench/director.sh: the content director (lb_policy shardcache, with hot
# paths spread, and with `spread off`: every request to its path's owner)
# against Caddy's uri_hash and round_robin, in front of a three-node
# cluster, with one Zipf request mix. A measurement, not a test.
#
#   bench/director.sh [-n requests] [-c conns] [-s exponent] [-i items] [-P san_port] [-t secs]
#
# For each policy in turn, on a fresh cluster (cold hot caches): three
# content nodes (SAN 127.0.0.2-4:<san_port>, `lan` = their HTTP site) and a
# director (observer, SAN 127.0.0.9:<san_port>) whose only site proxies to
# the three with that lb_policy; all four Caddys pinned to CPU 1. The load
# generator (bench/zipfload, pinned to CPU 0) sends the same request list
# each time: Zipf (exponent -s, v = 1) over -i items of 1-8 KiB, mapped
# through a fixed permutation, -n requests from -c keep-alive connections.
# Per policy it prints: req/s; the share of requests each tier answered,
# summed over the three nodes (local = the receiving node's own memory,
# i.e. the local-hit ratio); peer bytes / bytes served; the busiest node's
# requests / the mean (from the nodes' own counters); SAN bytes (peer
# fetches and the copies pushed to carry spread paths) / bytes served.
# Everything lives in a temporary directory, on loopback; every process is
# stopped by PID.
set -euo pipefail

COUNT=100000
CONNS=32
EXP=1.1
ITEMS=10000
SANPORT=27946
TIMEOUT=120
SERVER_CPU=1
CLIENT_CPU=0
POLICIES=(shardcache shardcache-nospread uri_hash round_robin)

usage() {
	sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
	cat <<EOF
  -n requests  requests per policy (default $COUNT)
  -c conns     concurrent connections of the load generator (default $CONNS)
  -s exponent  Zipf exponent, > 1 (default $EXP)
  -i items     items in the tree (default $ITEMS)
  -P port      UDP port of the SAN addresses (default $SANPORT)
  -t secs      time limit of each load run (default $TIMEOUT)
EOF
}

while getopts "n:c:s:i:P:t:h" opt; do
	case $opt in
	n) COUNT=$OPTARG ;;
	c) CONNS=$OPTARG ;;
	s) EXP=$OPTARG ;;
	i) ITEMS=$OPTARG ;;
	P) SANPORT=$OPTARG ;;
	t) TIMEOUT=$OPTARG ;;
	h) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH")

for tool in go taskset curl jq awk ss; do
	command -v "$tool" >/dev/null || { echo "director.sh: $tool not found" >&2; exit 1; }
done
if [ "$(nproc)" -lt 2 ]; then
	echo "director.sh: needs 2 CPUs (Caddys on CPU $SERVER_CPU, load on CPU $CLIENT_CPU)" >&2
	exit 1
fi

TMP=$(mktemp -d /tmp/shardcache-director.XXXXXX)
PIDS=()

stop_all() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	PIDS=()
}
cleanup() {
	trap '' INT TERM PIPE HUP
	stop_all
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

# freeport sets PORT to a TCP port that nothing listens on now and that
# this run has not handed out yet.
USED_PORTS=" "
freeport() {
	local p
	while :; do
		p=$((10000 + RANDOM % 22000)) # below the ephemeral range (32768-)
		if [[ $USED_PORTS != *" $p "* ]] && ! ss -Htln "sport = :$p" | grep -q .; then
			USED_PORTS+="$p "
			PORT=$p
			return
		fi
	done
}

echo "== building ./cmd/caddy and bench/zipfload"
(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -tags nobadger,nomysql,nopgx -o "$TMP/caddy" ./cmd/caddy)
(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -o "$TMP/zipfload" ./bench/zipfload)
CADDY=$TMP/caddy
LOAD=$TMP/zipfload

echo "== writing $ITEMS items of 1-8 KiB"
"$LOAD" gen -dir "$TMP/site" -n "$ITEMS" -min 1024 -max 8192 -seed 1
SHARDCACHE_SECRET=$("$CADDY" shardcache secret)
export SHARDCACHE_SECRET

NAMES=(n1 n2 n3)
SANS=("127.0.0.2:$SANPORT" "127.0.0.3:$SANPORT" "127.0.0.4:$SANPORT")
DIRECTOR_SAN="127.0.0.9:$SANPORT"

# node_caddyfile i http_port admin_port
node_caddyfile() {
	local i=$1 port=$2 admin=$3 j
	printf '{\n\tadmin 127.0.0.1:%s\n\tdefault_bind 127.0.0.1\n\tgrace_period 500ms\n\tshardcache {\n' "$admin"
	printf '\t\tnode %s %s\n' "${NAMES[$i]}" "${SANS[$i]}"
	for j in 0 1 2; do
		[ "$j" = "$i" ] || printf '\t\tpeer %s %s\n' "${NAMES[$j]}" "${SANS[$j]}"
	done
	printf '\t\tsecret {env.SHARDCACHE_SECRET}\n\t\tlan 127.0.0.1:%s\n\t}\n}\n\n' "$port"
	printf 'http://127.0.0.1:%s {\n\tbind 127.0.0.1\n\tshardcache {\n\t\troot %s\n\t\tgroup site\n\t\tmemory 256MiB\n\t\thot 16MiB\n\t}\n}\n' \
		"$port" "$TMP/site"
}

# director_caddyfile policy http_port admin_port node_port...
director_caddyfile() {
	local policy=$1 port=$2 admin=$3 j
	shift 3
	printf '{\n\tadmin 127.0.0.1:%s\n\tdefault_bind 127.0.0.1\n\tgrace_period 500ms\n\tshardcache {\n' "$admin"
	printf '\t\tnode director %s\n' "$DIRECTOR_SAN"
	for j in 0 1 2; do
		printf '\t\tpeer %s %s\n' "${NAMES[$j]}" "${SANS[$j]}"
	done
	printf '\t\tsecret {env.SHARDCACHE_SECRET}\n\t\tobserver\n\t}\n}\n\n'
	printf 'http://127.0.0.1:%s {\n\tbind 127.0.0.1\n\treverse_proxy' "$port"
	for j in "$@"; do
		printf ' 127.0.0.1:%s' "$j"
	done
	if [ "$policy" = shardcache-nospread ]; then
		printf ' {\n\t\tlb_policy shardcache {\n\t\t\tspread off\n\t\t}\n\t}\n}\n'
	else
		printf ' {\n\t\tlb_policy %s\n\t}\n}\n' "$policy"
	fi
}

# start name caddyfile: runs a Caddy pinned to SERVER_CPU.
start() {
	local name=$1 d=$TMP/run/$1
	mkdir -p "$d"
	printf '%s' "$2" >"$d/Caddyfile"
	HOME=$d XDG_DATA_HOME=$d/data XDG_CONFIG_HOME=$d/config \
		taskset -c "$SERVER_CPU" "$CADDY" run --config "$d/Caddyfile" --adapter caddyfile >"$d/caddy.log" 2>&1 &
	PIDS+=("$!")
}

# ready admin: the node (or director) is ready and sees every member up and ready.
ready() {
	curl -fsS --max-time 2 "http://127.0.0.1:$1/shardcache/status" 2>/dev/null |
		jq -e '.ready and (.members | length) >= 2 and all(.members[]; .up and .ready)' >/dev/null 2>&1
}

# counters admin: "local hot peer storage local_bytes hot_bytes peer_bytes storage_bytes pushed_bytes"
counters() {
	curl -fsS --max-time 5 "http://127.0.0.1:$1/shardcache/status" |
		jq -r '(.push.pushed_bytes // 0) as $pushed | [.groups[] | select(.group == "site") | .tiers] | .[0] |
			"\(.local.requests) \(.hot.requests) \(.peer.requests) \(.storage.requests) \(.local.bytes) \(.hot.bytes) \(.peer.bytes) \(.storage.bytes) \($pushed)"'
}

# up policy: starts the three nodes and the director with fresh ports and
# waits until each is ready and sees the others; returns 1 (everything
# stopped) if one exits or is not ready within 60s.
up() {
	local policy=$1 i a try pid
	rm -rf "$TMP/run"
	ports=() admins=()
	for i in 0 1 2; do
		freeport
		ports+=("$PORT")
		freeport
		admins+=("$PORT")
	done
	freeport
	dport=$PORT
	freeport
	dadmin=$PORT
	for i in 0 1 2; do
		start "${NAMES[$i]}" "$(node_caddyfile "$i" "${ports[$i]}" "${admins[$i]}")"
	done
	start director "$(director_caddyfile "$policy" "$dport" "$dadmin" "${ports[@]}")"
	for a in "${admins[@]}" "$dadmin"; do
		for ((try = 0; ; try++)); do
			ready "$a" && break
			for pid in "${PIDS[@]}"; do
				if ! kill -0 "$pid" 2>/dev/null; then
					echo "   a Caddy exited (a port taken meanwhile?):" >&2
					grep -h '"level":"error"' "$TMP"/run/*/caddy.log | tail -n 2 >&2
					stop_all
					return 1
				fi
			done
			if ((try >= 300)); then
				echo "   the Caddy with admin port $a is not ready after 60s" >&2
				tail -n 3 "$TMP"/run/*/caddy.log >&2
				stop_all
				return 1
			fi
			sleep 0.2
		done
	done
}

ROWS=()
for policy in "${POLICIES[@]}"; do
	echo "== $policy: starting 3 nodes and the director (CPU $SERVER_CPU)"
	for attempt in 1 2 3; do
		up "$policy" && break
		if [ "$attempt" = 3 ]; then
			echo "director.sh: could not start the cluster; logs were in $TMP/run" >&2
			exit 1
		fi
		echo "   trying again"
	done
	# Three items through the director, byte for byte, to check the
	# plumbing (not counted below).
	for i in 0 $((ITEMS / 2)) $((ITEMS - 1)); do
		p=$(printf '/d%02d/item-%05d.bin' $((i % 100)) "$i")
		if ! curl -fsS --max-time 5 -o "$TMP/body" "http://127.0.0.1:$dport$p" || ! cmp -s "$TMP/body" "$TMP/site$p"; then
			echo "director.sh: GET $p through the director: not the file's bytes" >&2
			exit 1
		fi
	done

	before=()
	for a in "${admins[@]}"; do before+=("$(counters "$a")"); done
	out=$(taskset -c "$CLIENT_CPU" "$LOAD" run -base "http://127.0.0.1:$dport" -n "$ITEMS" -s "$EXP" \
		-count "$COUNT" -c "$CONNS" -seed 1 -timeout "${TIMEOUT}s")
	after=()
	for a in "${admins[@]}"; do after+=("$(counters "$a")"); done
	echo "   $out"
	row=$(printf '%s\n' "${before[@]}" "${after[@]}" | awk -v policy="$policy" -v out="$out" '
		{ for (k = 1; k <= 9; k++) v[NR, k] = $k }
		END {
			for (k = 1; k <= 9; k++) { d[k] = 0; for (i = 1; i <= 3; i++) d[k] += v[i + 3, k] - v[i, k] }
			req = d[1] + d[2] + d[3] + d[4]; byt = d[5] + d[6] + d[7] + d[8]
			top = 0
			for (i = 1; i <= 3; i++) {
				n = 0; for (k = 1; k <= 4; k++) n += v[i + 3, k] - v[i, k]
				if (n > top) top = n
			}
			split(out, f, " "); for (i in f) { split(f[i], kv, "="); o[kv[1]] = kv[2] }
			printf "%-20s %9d %7d %9.0f %8.2f%% %7.2f%% %7.2f%% %8.2f%% %12.2f%% %13.3f %12.3f%%\n", policy, o["requests"], o["errors"], o["rps"],
				100 * d[1] / (req ? req : 1), 100 * d[2] / (req ? req : 1), 100 * d[3] / (req ? req : 1), 100 * d[4] / (req ? req : 1),
				100 * d[7] / (byt ? byt : 1), 3 * top / (req ? req : 1), 100 * (d[7] + d[9]) / (byt ? byt : 1)
		}')
	ROWS+=("$row")
	stop_all
done

echo
echo "== $COUNT requests per policy, Zipf s=$EXP over $ITEMS items of 1-8 KiB, $CONNS connections;"
echo "   4 Caddys on CPU $SERVER_CPU, load on CPU $CLIENT_CPU; tiers summed over the 3 nodes; fresh cluster per policy"
printf '%-20s %9s %7s %9s %9s %8s %8s %9s %13s %13s %13s\n' POLICY REQUESTS ERRORS REQ/S LOCAL HOT PEER STORAGE PEER_B/SERVED BUSIEST/MEAN SAN_B/SERVED
printf '%s\n' "${ROWS[@]}"
