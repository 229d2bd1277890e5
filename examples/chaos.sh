#!/usr/bin/env bash
# Chaos on the three-node example (examples/cluster) behind a content
# director: N cycles (default 3) of
#
#	a bounded load through the director (examples/chaos: 8 workers, every
#	body compared byte for byte with examples/single/site),
#	kill -9 of a random node, a wait, its restart with the same config,
#	a reload (POST /load, `hot` changed) of another node,
#
# and per cycle one line: requests sent, failed, wrong, the failures in the
# 2 s after the kill (and later), how long the other nodes and the director
# took to mark the killed node down, and when it was seen ready again.
#
#	examples/chaos.sh [N]
#
# The nodes are examples/cluster/n{1,2,3}.Caddyfile with one line added,
# `lan 127.0.0.1:808<i>` if they lack it (the director routes by it): HTTP on
# 127.0.0.1:8081-8083, SAN 127.0.0.2-4:7946, admin 127.0.0.1:2991-2993. The
# director (as in examples/director): HTTP 127.0.0.1:8090, SAN
# 127.0.0.9:7946, admin 127.0.0.1:2990.
# Needs curl. Exits non-zero if a body was ever wrong.
set -euo pipefail

cycles=${1:-3}
if ! [[ $cycles =~ ^[0-9]+$ ]] || ((cycles < 1)); then
	echo "usage: $0 [cycles]" >&2
	exit 2
fi

cd "$(dirname "$0")/.." # the repository root: the Caddyfiles' root is relative to it
work=$(mktemp -d "${TMPDIR:-/tmp}/shardcache-chaos.XXXXXX")
caddy=$work/caddy
declare -A pid
status=0

stop_all() {
	local n
	for n in "${!pid[@]}"; do
		kill -TERM "${pid[$n]}" 2>/dev/null || true
	done
	for n in "${!pid[@]}"; do
		wait "${pid[$n]}" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

now_ms() { date +%s%3N; }

echo "== building ./cmd/caddy and ./examples/chaos"
CGO_ENABLED=0 go build -trimpath -tags nobadger,nomysql,nopgx -o "$caddy" ./cmd/caddy
CGO_ENABLED=0 go build -o "$work/chaos" ./examples/chaos

SHARDCACHE_SECRET=$("$caddy" shardcache secret)
export SHARDCACHE_SECRET

# The node configs: the example's, with `lan` added if it has none; and a
# variant with another `hot` for the reloads.
for i in 1 2 3; do
	if grep -q "^[[:space:]]*lan " "examples/cluster/n$i.Caddyfile"; then
		cp "examples/cluster/n$i.Caddyfile" "$work/n$i.Caddyfile"
	else
		sed "s/^\([[:space:]]*\)secret {env.SHARDCACHE_SECRET}$/&\n\1lan 127.0.0.1:808$i/" \
			"examples/cluster/n$i.Caddyfile" >"$work/n$i.Caddyfile"
	fi
	grep -q "lan 127.0.0.1:808$i" "$work/n$i.Caddyfile" || {
		echo "could not add lan to n$i.Caddyfile" >&2
		exit 1
	}
	sed 's/hot 16MiB/hot 8MiB/' "$work/n$i.Caddyfile" >"$work/n$i.alt.Caddyfile"
done
cat >"$work/director.Caddyfile" <<'EOF'
{
	admin 127.0.0.1:2990
	shardcache {
		node director 127.0.0.9:7946
		peer n1 127.0.0.2:7946
		peer n2 127.0.0.3:7946
		peer n3 127.0.0.4:7946
		secret {env.SHARDCACHE_SECRET}
		observer
	}
}

http://127.0.0.1:8090 {
	bind 127.0.0.1
	reverse_proxy 127.0.0.1:8081 127.0.0.1:8082 127.0.0.1:8083 {
		lb_policy shardcache
	}
}
EOF

start() { # name config
	local d=$work/$1
	mkdir -p "$d"
	HOME=$d XDG_DATA_HOME=$d/data XDG_CONFIG_HOME=$d/config \
		"$caddy" run --config "$2" >>"$d/caddy.log" 2>&1 &
	pid[$1]=$!
}

admin_of() { # name
	case $1 in
	director) echo 127.0.0.1:2990 ;;
	n*) echo "127.0.0.1:299${1#n}" ;;
	esac
}

# sees_ready <observer> <member>...: the observer's status shows every
# member up and ready.
sees_ready() {
	local st m obs=$1
	shift
	st=$(curl -fsS --max-time 1 "http://$(admin_of "$obs")/shardcache/status" 2>/dev/null | tr -d ' \n') || return 1
	for m in "$@"; do
		grep -q "\"name\":\"$m\",\"address\":\"[^\"]*\",\"up\":true,\"ready\":true" <<<"$st" || return 1
	done
}

wait_ready() { # timeout_s; every node sees the others, the director sees all
	local deadline=$((SECONDS + $1)) n others
	for n in n1 n2 n3 director; do
		case $n in
		director) others="n1 n2 n3" ;;
		*) others=$(echo n1 n2 n3 | tr ' ' '\n' | grep -v "^$n$" | tr '\n' ' ') ;;
		esac
		# shellcheck disable=SC2086
		until sees_ready "$n" $others; do
			if ((SECONDS > deadline)); then
				echo "$n does not see $others up and ready after $1 s; its log:" >&2
				tail -n 20 "$work/$n/caddy.log" >&2
				return 1
			fi
			sleep 0.1
		done
	done
}

echo "== starting n1, n2, n3 and the director (logs in $work/*/caddy.log)"
for i in 1 2 3; do
	start "n$i" "$work/n$i.Caddyfile"
done
start director "$work/director.Caddyfile"
wait_ready 30
echo "== ready"

admins=n1=127.0.0.1:2991,n2=127.0.0.1:2992,n3=127.0.0.1:2993,director=127.0.0.1:2990
for ((c = 1; c <= cycles; c++)); do
	events=$work/events.$c
	: >"$events"
	"$work/chaos" -url http://127.0.0.1:8090 -site examples/single/site -admin "$admins" \
		-events "$events" -workers 8 -budget 300000 -max 60s >"$work/chaos.$c.out" 2>&1 &
	load=$!
	sleep 3

	v=$((RANDOM % 3 + 1))
	echo "$(now_ms) kill n$v" >>"$events"
	kill -KILL "${pid[n$v]}"
	wait "${pid[n$v]}" 2>/dev/null || true
	sleep 3

	echo "$(now_ms) restart n$v" >>"$events"
	start "n$v" "$work/n$v.Caddyfile"
	wait_ready 30

	r=$(((v + RANDOM % 2) % 3 + 1)) # another node
	cfg=$work/n$r.Caddyfile
	if ((c % 2)); then cfg=$work/n$r.alt.Caddyfile; fi
	echo "$(now_ms) reload n$r" >>"$events"
	code=$(curl -sS -o "$work/reload.out" -w '%{http_code}' -X POST -H 'Content-Type: text/caddyfile' \
		--data-binary "@$cfg" "http://$(admin_of "n$r")/load")
	if [[ $code != 200 ]]; then
		echo "cycle $c: reload of n$r answered $code: $(cat "$work/reload.out")" >&2
	fi
	sleep 2

	echo stop >>"$events"
	if ! wait "$load"; then
		status=1
	fi
	echo "cycle $c: $(head -n 1 "$work/chaos.$c.out")"
	tail -n +2 "$work/chaos.$c.out"
done
exit $status
