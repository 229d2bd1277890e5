#!/usr/bin/env bash
# A three-node shardcache cluster on this machine, from n1.Caddyfile,
# n2.Caddyfile and n3.Caddyfile: HTTP on 127.0.0.1:8081-8083, peering over
# QUIC on 127.0.0.2-4:7946, admin API on 127.0.0.1:2991-2993.
#
#	examples/cluster/run.sh             build, start, show a cross-node fetch, stop
#	examples/cluster/run.sh --keep      ... and leave the nodes running until Ctrl-C
#	examples/cluster/run.sh --director  ... also start the content director of
#	                                    examples/director (HTTP 127.0.0.1:8090,
#	                                    SAN 127.0.0.9:7946, admin 127.0.0.1:2990)
#	                                    and fetch every file through it
#
# It builds ./cmd/caddy, makes a fresh cluster secret (exported as
# SHARDCACHE_SECRET, which the Caddyfiles read), starts the three nodes,
# waits until every node is ready and sees its peers, then fetches every
# file of examples/single/site from every node and shows which node owns
# it and which tier answered. Needs curl. Every 127.x.y.z address is
# loopback on Linux; elsewhere add 127.0.0.2-4 to the loopback interface.
set -euo pipefail

keep=0
director=0
for arg in "$@"; do
	case "$arg" in
	--keep) keep=1 ;;
	--director) director=1 ;;
	*)
		echo "usage: $0 [--keep] [--director]" >&2
		exit 2
		;;
	esac
done

cd "$(dirname "$0")/../.." # the repository root: the Caddyfiles' root is relative to it
site=examples/single/site
work=$(mktemp -d "${TMPDIR:-/tmp}/shardcache-cluster.XXXXXX")
caddy=$work/caddy
pids=()

stop() {
	local pid
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	pids=()
	rm -rf "$work"
}
trap stop EXIT
trap 'exit 130' INT TERM

echo "== building ./cmd/caddy"
CGO_ENABLED=0 go build -trimpath -tags nobadger,nomysql,nopgx -o "$caddy" ./cmd/caddy

SHARDCACHE_SECRET=$("$caddy" shardcache secret)
export SHARDCACHE_SECRET

echo "== starting n1, n2, n3 (logs in $work/n*/caddy.log)"
for i in 1 2 3; do
	d=$work/n$i
	mkdir -p "$d"
	HOME=$d XDG_DATA_HOME=$d/data XDG_CONFIG_HOME=$d/config \
		"$caddy" run --config "examples/cluster/n$i.Caddyfile" >"$d/caddy.log" 2>&1 &
	pids+=("$!")
	echo "n$i: pid $!"
done

# Ready: the node is primed and sees both peers up and primed.
ready() {
	local st
	st=$(curl -fsS --max-time 2 "http://127.0.0.1:299$1/shardcache/status" 2>/dev/null) || return 1
	grep -q '"members"' <<<"$st" && ! grep -q '"ready": false' <<<"$st" && ! grep -q '"up": false' <<<"$st"
}
# wait_for WHAT PID LOG CHECK...: runs CHECK every 0.2 s until it
# succeeds; gives up, showing the end of LOG, when PID exits or after 30 s.
wait_for() {
	local what=$1 pid=$2 log=$3
	shift 3
	for ((try = 0; ; try++)); do
		if "$@"; then
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "$what exited:" >&2
			tail -n 20 "$log" >&2
			exit 1
		fi
		if ((try >= 150)); then
			echo "$what not ready after 30s:" >&2
			tail -n 20 "$log" >&2
			exit 1
		fi
		sleep 0.2
	done
}
for i in 1 2 3; do
	wait_for "n$i" "${pids[$((i - 1))]}" "$work/n$i/caddy.log" ready "$i"
done
echo "== all three nodes ready"
"$caddy" shardcache status --address 127.0.0.1:2991

echo
echo "== every file from every node (the owner serves it from its memory, the others from the owner's over QUIC)"
printf '%-24s %-6s %-22s %-22s %-22s\n' PATH OWNER n1:8081 n2:8082 n3:8083
failed=0
while IFS= read -r f; do
	p=/${f#"$site"/}
	owner=$(curl -fsS --max-time 2 "http://127.0.0.1:2991/shardcache/where?path=$p" |
		sed -n 's/.*"owner": "\([^"]*\)".*/\1/p' | head -n 1)
	row=()
	for i in 1 2 3; do
		out=$work/body
		code=$(curl -sS --max-time 5 -o "$out" -w '%{http_code}' "http://127.0.0.1:808$i$p")
		if [[ $code == 200 ]] && cmp -s "$out" "$f"; then
			row+=("200 $(wc -c <"$out" | tr -d ' ')B same")
		else
			row+=("$code DIFFERENT")
			failed=1
		fi
	done
	printf '%-24s %-6s %-22s %-22s %-22s\n' "$p" "${owner:-?}" "${row[@]}"
done < <(find "$site" -type f ! -name '*.gz' | sort)

echo
echo "== the same ETag on every node"
for i in 1 2 3; do
	printf 'n%s: ' "$i"
	curl -sS --max-time 5 -o /dev/null -D - "http://127.0.0.1:808$i/css/site.css" | grep -i '^etag' || echo "(none)"
done

echo
echo "== the gzip variant (css/site.css.gz) from every node, whoever owns it"
for i in 1 2 3; do
	code=$(curl -sS --max-time 5 -H 'Accept-Encoding: gzip' -o "$work/body" -w '%{http_code} %header{content-encoding}' "http://127.0.0.1:808$i/css/site.css")
	if cmp -s "$work/body" "$site/css/site.css.gz"; then
		echo "n$i: $code, the .gz file's bytes"
	else
		echo "n$i: $code, DIFFERENT bytes"
		failed=1
	fi
done

echo
echo "== which tier answered, per node (LOCAL: its own share, PEER: an owner's memory over QUIC, HOT: a local copy)"
for i in 1 2 3; do
	echo "-- n$i"
	"$caddy" shardcache status --address "127.0.0.1:299$i" | sed -n '/^GROUP/,$p'
done

if ((director)); then
	echo
	echo "== starting the content director (examples/director/director.Caddyfile; log in $work/director/caddy.log)"
	d=$work/director
	mkdir -p "$d"
	HOME=$d XDG_DATA_HOME=$d/data XDG_CONFIG_HOME=$d/config \
		"$caddy" run --config examples/director/director.Caddyfile >"$d/caddy.log" 2>&1 &
	pids+=("$!")
	echo "director: pid $!"
	# Ready: it sees the three nodes up and primed.
	director_sees_all() {
		local st
		st=$(curl -fsS --max-time 2 http://127.0.0.1:2990/shardcache/status 2>/dev/null) || st=
		[[ $(grep -c '"ready": true' <<<"$st") -ge 4 ]] && ! grep -q '"up": false' <<<"$st"
	}
	wait_for "the director (seeing the three nodes ready)" "${pids[-1]}" "$d/caddy.log" director_sees_all
	"$caddy" shardcache status --address 127.0.0.1:2990 | sed -n '1,/^$/p'

	echo "== every file through the director (127.0.0.1:8090): each goes to its owner, a local hit there"
	declare -A local_before
	for i in 1 2 3; do
		local_before[$i]=$(curl -fsS --max-time 2 "http://127.0.0.1:299$i/shardcache/status" |
			tr -d ' \n' | sed -n 's/.*"local":{"requests":\([0-9]*\).*/\1/p')
	done
	n=0
	while IFS= read -r f; do
		p=/${f#"$site"/}
		code=$(curl -sS --max-time 5 -o "$work/body" -w '%{http_code}' "http://127.0.0.1:8090$p")
		if [[ $code == 200 ]] && cmp -s "$work/body" "$f"; then
			n=$((n + 1))
		else
			echo "$p: $code, DIFFERENT" >&2
			failed=1
		fi
	done < <(find "$site" -type f ! -name '*.gz' | sort)
	moved=0
	for i in 1 2 3; do
		now=$(curl -fsS --max-time 2 "http://127.0.0.1:299$i/shardcache/status" |
			tr -d ' \n' | sed -n 's/.*"local":{"requests":\([0-9]*\).*/\1/p')
		moved=$((moved + now - ${local_before[$i]:-0}))
	done
	echo "$n files served byte for byte through the director; the nodes' local hits grew by $moved"
fi

if ((failed)); then
	echo "some files were not served byte for byte" >&2
	exit 1
fi
if ((keep)); then
	echo
	if ((director)); then
		echo "== running: http://127.0.0.1:8090/ (the director), http://127.0.0.1:8081-8083/ (the nodes) (Ctrl-C stops them)"
	else
		echo "== running: http://127.0.0.1:8081/ http://127.0.0.1:8082/ http://127.0.0.1:8083/ (Ctrl-C stops them)"
	fi
	wait
fi
