#!/usr/bin/env bash
# bench/all.sh: every measurement of bench/, one after another, each printing
# its own table with its baselines measured in the same run. A measurement,
# not a test: run it on an otherwise idle 2-CPU machine.
#
#   bench/all.sh [-r repeats]      # -r 3: best of three where a script supports it
#
# In order: the request hot path's Go benchmarks (-benchmem); run.sh
# (shardcache vs respond vs file_server, HTTP and HTTPS, priming a 1 GiB
# tree); cluster.sh (local vs hot vs remote on a non-owner, then the peer
# transport vs a bare quic-go stream, HTTP/2 and HTTP/1.1 over TLS,
# groupcache's HTTPPool and a memory copy, 1 KiB-4 MiB); director.sh (Zipf
# mix through lb_policy shardcache vs uri_hash vs round_robin); memory.sh
# (RSS against bytes held); large.sh (one 1 GiB file: local, remote, hot,
# a Range on a non-owner). About 30 minutes with -r 1. Everything is also
# written to bench/out/all-<time>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

REPEATS=1
while getopts "r:h" opt; do
	case $opt in
	r) REPEATS=$OPTARG ;;
	h) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
	esac
done

mkdir -p bench/out
out=bench/out/all-$(date -u +%Y%m%d-%H%M%S).txt
section() { printf '\n===== %s =====\n\n' "$*"; }

{
	section "machine"
	date -u
	echo "$(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), $(go version)"
	uptime

	section "request hot path: go test -bench 'LocalHit|HotHit' -benchmem . ; -bench Lookup ./shard/"
	CGO_ENABLED=0 go test -trimpath -tags nobadger,nomysql,nopgx -run '^$' -bench 'LocalHit|HotHit' -benchmem -count 1 .
	CGO_ENABLED=0 go test -trimpath -run '^$' -bench 'Lookup' -benchmem -count 1 ./shard/

	section "bench/run.sh -r $REPEATS"
	bench/run.sh -r "$REPEATS"

	section "bench/cluster.sh -r $REPEATS"
	SAN_PORT=${SAN_PORT:-17946} bench/cluster.sh -r "$REPEATS"

	section "bench/director.sh"
	bench/director.sh

	section "bench/memory.sh"
	bench/memory.sh

	section "bench/large.sh"
	bench/large.sh
} 2>&1 | tee "$out"
echo "(all of the above is in $out)"
