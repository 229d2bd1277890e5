#!/usr/bin/env bash
# Discovery through DNS, and a member joining and leaving, on this machine.
#
#	examples/dns/run.sh
#
# It builds ./cmd/caddy and examples/dns/dnsserver, starts the DNS server
# on 127.0.0.1:8053 answering from a copy of records.txt (SRV records of
# _shardcache._udp.demo.shardcache.test: n1-n3), and starts n1, n2 and n3
# (n1-n3.Caddyfile: no peer lines, only `peers srv`). Once all three see
# a ring of three and are primed, it adds n4's records to the file and
# starts n4 (n4.Caddyfile): every node finds it within a second or two and
# the ring grows to four; each node's share shrinks. Then it takes n4's
# records out again: the three shrink the ring back to three and take its
# share back, and n4 is stopped. Every process it started is stopped by
# its PID on exit. Needs curl; every 127.x.y.z address is loopback on
# Linux (elsewhere add 127.0.0.2-5 to the loopback interface).
set -euo pipefail

cd "$(dirname "$0")/../.." # the repository root: the Caddyfiles' root is relative to it
site=examples/single/site
work=$(mktemp -d "${TMPDIR:-/tmp}/shardcache-dns.XXXXXX")
caddy=$work/caddy
records=$work/records.txt
pids=()
declare -A node_pid

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

echo "== building ./cmd/caddy and examples/dns/dnsserver"
CGO_ENABLED=0 go build -trimpath -tags nobadger,nomysql,nopgx -o "$caddy" ./cmd/caddy
CGO_ENABLED=0 go build -trimpath -o "$work/dnsserver" ./examples/dns/dnsserver

SHARDCACHE_SECRET=$("$caddy" shardcache secret)
export SHARDCACHE_SECRET

cp examples/dns/records.txt "$records"
"$work/dnsserver" -addr 127.0.0.1:8053 -records "$records" >"$work/dnsserver.log" 2>&1 &
pids+=("$!")
echo "dnsserver: pid $!, answering from $records"

# status N: node nN's /shardcache/status, on one line without spaces.
status() {
	curl -fsS --max-time 2 "http://127.0.0.1:298$1/shardcache/status" 2>/dev/null | tr -d ' \n'
}
# ring N: the members of nN's ring, comma-separated.
ring() {
	status "$1" | sed -n 's/.*"ring":\[\([^]]*\)\].*/\1/p' | tr -d '"'
}
# primed N: how many files nN holds in memory (its share).
primed() {
	status "$1" | sed -n 's/.*"primed_items":\([0-9]*\).*/\1/p'
}
# ready N: nN is primed. The same test as the readiness probe of
# examples/kubernetes/shardcache.yaml: the top-level "ready" field.
ready() {
	curl -fsS --max-time 2 "http://127.0.0.1:298$1/shardcache/status" | grep -qx '  "ready": true,'
}
# settled WANT N...: every node N has the ring WANT, is primed, and sees
# every other member of the ring up and ready.
settled() {
	local want=$1 n st
	shift
	for n in "$@"; do
		[[ $(ring "$n") == "$want" ]] || return 1
		ready "$n" 2>/dev/null || return 1
		st=$(status "$n")
		! grep -q '"up":false\|"ready":false' <<<"$st" || return 1
	done
}
# wait_for WHAT CHECK...: runs CHECK every 0.2 s until it succeeds; gives
# up after 30 s, or at once when a node has exited, showing its log.
wait_for() {
	local what=$1 try n t0 ms
	shift
	t0=$(date +%s%N)
	for ((try = 0; ; try++)); do
		if "$@"; then
			ms=$((($(date +%s%N) - t0) / 1000000))
			echo "   $what: after $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s"
			return 0
		fi
		for n in "${!node_pid[@]}"; do
			if ! kill -0 "${node_pid[$n]}" 2>/dev/null; then
				echo "n$n exited:" >&2
				tail -n 20 "$work/n$n/caddy.log" >&2
				exit 1
			fi
		done
		if ((try >= 150)); then
			echo "$what: not after 30s" >&2
			for n in "${!node_pid[@]}"; do
				echo "-- n$n: ring [$(ring "$n")]" >&2
				tail -n 5 "$work/n$n/caddy.log" >&2
			done
			exit 1
		fi
		sleep 0.2
	done
}
start() {
	local d=$work/n$1
	mkdir -p "$d"
	HOME=$d XDG_DATA_HOME=$d/data XDG_CONFIG_HOME=$d/config \
		"$caddy" run --config "examples/dns/n$1.Caddyfile" >"$d/caddy.log" 2>&1 &
	pids+=("$!")
	node_pid[$1]=$!
	echo "n$1: pid $!"
}
# show N...: each node's ring and how many files it has primed. A node
# that gives a file up to a new holder keeps it for two minutes (the new
# holder primes it from that memory), so counts shrink only later.
show() {
	local n
	printf '   %-4s %-16s %s\n' NODE RING "PRIMED FILES"
	for n in "$@"; do
		printf '   %-4s %-16s %s\n' "n$n" "$(ring "$n")" "$(primed "$n")"
	done
}
# owners STAGE N: records the owner of every file of the site, as node nN
# sees it (/shardcache/where), in owner_STAGE.
declare -A owner_3 owner_4 owner_back
owners() {
	local -n into=owner_$1
	local f p
	while IFS= read -r f; do
		p=/${f#"$site"/}
		into[$p]=$(curl -fsS --max-time 2 "http://127.0.0.1:298$2/shardcache/where?path=$p" |
			sed -n 's/.*"owner": "\([^"]*\)".*/\1/p' | head -n 1)
	done < <(find "$site" -type f | sort)
}
# moves FROM TO: the files whose owner changed between two stages.
moves() {
	local -n from=owner_$1 to=owner_$2
	local p n=0
	printf '   %-22s %-8s %s\n' PATH BEFORE AFTER
	for p in $(printf '%s\n' "${!from[@]}" | sort); do
		if [[ ${from[$p]} != "${to[$p]}" ]]; then
			printf '   %-22s %-8s %-8s moved\n' "$p" "${from[$p]}" "${to[$p]}"
			n=$((n + 1))
		else
			printf '   %-22s %-8s %s\n' "$p" "${from[$p]}" "${to[$p]}"
		fi
	done
	echo "   $n of ${#from[@]} files changed owner"
}
# check N...: every file of the site from every node N, byte for byte.
check() {
	local n f p ok=0 bad=0
	for n in "$@"; do
		while IFS= read -r f; do
			p=/${f#"$site"/}
			if curl -fsS --max-time 5 -o "$work/body" "http://127.0.0.1:818$n$p" && cmp -s "$work/body" "$f"; then
				ok=$((ok + 1))
			else
				echo "   n$n $p: DIFFERENT" >&2
				bad=$((bad + 1))
			fi
		done < <(find "$site" -type f ! -name '*.gz' | sort)
	done
	echo "   every file from n$(IFS=,; echo "$*" | sed 's/,/, n/g'): $ok byte for byte, $bad different"
	((bad == 0))
}

echo
echo "== starting n1, n2, n3: no peer lines, the SRV records name them"
for i in 1 2 3; do start "$i"; done
wait_for "ring n1,n2,n3 on all three, primed" settled n1,n2,n3 1 2 3
show 1 2 3
owners 3 1
check 1 2 3

echo
echo "== n4 joins: its SRV and A records go into $records, then it starts"
cat >>"$records" <<'RECORDS'
_shardcache._udp.demo.shardcache.test. 1 IN SRV 0 0 7956 n4.demo.shardcache.test.
n4.demo.shardcache.test. 1 IN A 127.0.0.5
RECORDS
start 4
wait_for "ring n1,n2,n3,n4 on all four, primed" settled n1,n2,n3,n4 1 2 3 4
show 1 2 3 4
owners 4 1
echo "   what moved (owners as n1 sees them):"
moves 3 4
check 1 2 3 4

echo
echo "== n4 leaves: its records come out of $records; the others drop it, then it stops"
grep -v 'n4\.demo' "$records" >"$records.new"
mv "$records.new" "$records"
wait_for "ring n1,n2,n3 on n1-n3, primed" settled n1,n2,n3 1 2 3
show 1 2 3
owners back 1
echo "   what moved back:"
moves 4 back
kill -TERM "${node_pid[4]}"
wait "${node_pid[4]}" 2>/dev/null || true
unset 'node_pid[4]'
echo "   n4 stopped"
check 1 2 3

echo
echo "== n1's view (caddy shardcache status)"
"$caddy" shardcache status --address 127.0.0.1:2981
