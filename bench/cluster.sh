#!/usr/bin/env bash
# bench/cluster.sh: a three-node shardcache cluster on loopback; on node n1,
# for 1 KiB, 64 KiB and 1 MiB files, the throughput of a local hit (a file
# n1 owns), a hot hit (another node's file n1 keeps in its hot cache) and a
# remote fetch (another node's file, fetched from its owner over QUIC on
# every request); then the peering transfer benchmark. See bench/README.md.
#
#   bench/cluster.sh [-d secs] [-w secs] [-c conns] [-r n] [-s sizes] [-n files] [-P]
set -euo pipefail

DUR=5          # seconds measured per cell
WARM=1         # seconds of warm-up before each cell
CONNS=32       # wrk connections (one wrk thread)
NFILES=12      # files of each size in the site
REPEATS=1      # measure every cell this many times, keep the best
SIZES=(1k 64k 1m)
PEERBENCH=1    # -P: skip the peering Go benchmark
SERVER_CPU=1   # every Caddy of the cluster
CLIENT_CPU=0   # wrk
HOT_TARGET=0.95
SAN_PORT=${SAN_PORT:-7946}
SAN_HOSTS=(127.0.0.2 127.0.0.3 127.0.0.4)

usage() {
	sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
	cat <<EOF
  -d secs     measured duration of each wrk run (default $DUR)
  -w secs     warm-up before each run (default $WARM)
  -c conns    wrk connections (default $CONNS)
  -r n        repeat every measurement n times and keep the best (default 1)
  -s sizes    comma-separated subset of 1k,64k,1m (default all)
  -n files    files of each size in the generated site (default $NFILES)
  -P          skip the peering Go benchmark (BenchmarkTransferPaired)
Environment: SAN_PORT (default 7946), QUIET_PCT, QUIET_TRIES, QUIET_WAIT,
PORT_WAIT (seconds to wait for the SAN ports to be free, default 300).
EOF
}

while getopts "d:w:c:r:s:n:Ph" opt; do
	case $opt in
	d) DUR=$OPTARG ;;
	w) WARM=$OPTARG ;;
	c) CONNS=$OPTARG ;;
	r) REPEATS=$OPTARG ;;
	s) IFS=, read -r -a SIZES <<<"$OPTARG" ;;
	n) NFILES=$OPTARG ;;
	P) PEERBENCH=0 ;;
	h) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$BENCH/lib.sh" # REPO, OUT, STAMP and the helpers
WRKLOG=$OUT/cluster-wrk-$STAMP.txt

bench_setup cluster.sh Caddys shardcluster go wrk taskset curl jq cmp ss

LOAD_BEFORE=$(loadavg)

# --- ports -------------------------------------------------------------------

declare -A ADMIN=() HTTP=()
for i in 1 2 3; do
	freeport ADMIN[$i]
	freeport HTTP[$i]
done

# The SAN addresses are fixed (127.0.0.2-4:7946); other clusters on this
# machine (tests, examples/cluster) may hold them for a while.
PORT_WAIT=${PORT_WAIT:-300}
sanwait "one of ${SAN_HOSTS[*]}:"

# --- build and site ----------------------------------------------------------

mkdir -p "$TMP/bin"
log "building ./cmd/caddy: CGO_ENABLED=0 ${BUILD[*]}"
(cd "$REPO" && CGO_ENABLED=0 "${BUILD[@]}" -o "$TMP/bin/caddy" ./cmd/caddy)
CADDY=$TMP/bin/caddy

declare -A BYTES=([1k]=1024 [64k]=65536 [1m]=1048576)
declare -A LABEL=([1k]="1 KiB" [64k]="64 KiB" [1m]="1 MiB")
for s in "${SIZES[@]}"; do
	[ -n "${BYTES[$s]:-}" ] || { echo "cluster.sh: -s: unknown size '$s' (1k, 64k, 1m)" >&2; exit 2; }
done
SRC=$TMP/site
mkdir -p "$SRC/f"
for s in "${SIZES[@]}"; do
	for j in $(seq -w 0 $((NFILES - 1))); do
		head -c "${BYTES[$s]}" /dev/urandom >"$SRC/f/$s-$j.bin"
	done
done
# Every node its own copy, as with a synced tree.
for i in 1 2 3; do
	cp -r "$SRC" "$TMP/site$i"
done

SHARDCACHE_SECRET=$("$CADDY" shardcache secret)
export SHARDCACHE_SECRET

# nodecf I HOT: the Caddyfile of node nI with a hot cache of HOT.
nodecf() {
	local i=$1 hot=$2 j
	cat <<EOF
{
	admin 127.0.0.1:${ADMIN[$i]}
	persist_config off
	shardcache {
		node n$i ${SAN_HOSTS[$((i - 1))]}:$SAN_PORT
EOF
	for j in 1 2 3; do
		[ "$j" = "$i" ] || printf '\t\tpeer n%s %s:%s\n' "$j" "${SAN_HOSTS[$((j - 1))]}" "$SAN_PORT"
	done
	cat <<EOF
		secret {env.SHARDCACHE_SECRET}
		fetch_timeout 2s
	}
}

http://127.0.0.1:${HTTP[$i]} {
	bind 127.0.0.1
	shardcache {
		root $TMP/site$i
		group site
		memory 256MiB
		hot $hot
	}
}
EOF
}

# --- nodes ---------------------------------------------------------------------

# startnode, stopnode, status and waitready (lib.sh): nodes n1-n3.
declare -A NPID=()

where() { # where PATH: n1's /shardcache/where answer for PATH (the group's entry)
	curl -fsS --max-time 5 "http://127.0.0.1:${ADMIN[1]}/shardcache/where?path=$1" | jq -c '.[0]'
}

# --- measuring -------------------------------------------------------------------

# The same foreign-CPU check as run.sh: a run where processes other than
# the Caddys and wrk used more than QUIET_PCT of a CPU is redone (up to
# QUIET_TRIES times, each after waiting up to QUIET_WAIT s for a quiet half
# second); if no try was quiet the best is kept and marked "~".
QUIET_PCT=${QUIET_PCT:-10}
QUIET_TRIES=${QUIET_TRIES:-4}
QUIET_WAIT=${QUIET_WAIT:-30}

# luascript FILE PATH...: a wrk script that cycles through the paths (the
# requests are formatted once, at init).
luascript() {
	local f=$1 p
	shift
	{
		echo "local paths = {"
		for p in "$@"; do echo "  \"$p\","; done
		echo "}"
		cat <<'EOF'
local reqs, i = {}, 0
function init(args)
  for k, p in ipairs(paths) do reqs[k] = wrk.format("GET", p) end
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
EOF
	} >"$f"
}

# counters: n1's tier request counts, and the fetches n2 and n3 served
# their peers, as one line "local hot peer storage served".
counters() {
	local s2 s3
	s2=$(status 2 | jq '[.groups[].served_to_peers] | add')
	s3=$(status 3 | jq '[.groups[].served_to_peers] | add')
	status 1 | jq -r --argjson srv $((s2 + s3)) '
		[.groups[].tiers] | [ (map(.local.requests) | add), (map(.hot.requests // 0) | add),
		  (map(.peer.requests // 0) | add), (map(.storage.requests) | add), $srv ] | @tsv'
}

declare -A RPS=() MBS=() NOISY=() TIERS=() REQS=() OTHER=() NOTE=() N1CPU=()

# measure KEY SCRIPT: warm up, run wrk on n1 with the script, keep the best
# quiet try; TIERS[KEY] is n1's tier counters over the kept run.
measure() {
	local key=$1 lua=$2 u res rps mbs try s0 s1 c0 c1 wt wall foreign quiet=0 k0 k1 d errs n keep n0 n1 cpu
	u="http://127.0.0.1:${HTTP[1]}"
	for try in $(seq 1 "$QUIET_TRIES"); do
		waitquiet
		taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${WARM}s" -s "$lua" "$u" >/dev/null
		k0=$(counters)
		s0=$(sys_ticks)
		c0=$(proc_ticks "${NPID[@]}")
		n0=$(proc_ticks "${NPID[1]}")
		{ TIMEFORMAT='%3U %3S %3R'; time taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$lua" "$u" >"$TMP/wrk.out" 2>&1; } 2>"$TMP/wrk.time"
		s1=$(sys_ticks)
		c1=$(proc_ticks "${NPID[@]}")
		n1=$(proc_ticks "${NPID[1]}")
		k1=$(counters)
		res=$(cat "$TMP/wrk.out")
		wt=$(awk '{print $1 + $2}' "$TMP/wrk.time")
		wall=$(awk '{print $3}' "$TMP/wrk.time")
		foreign=$(foreign_pct "$s0" "$s1" "$c0" "$c1" "$wt" "$wall")
		printf '== %s (try %d, other CPU use %s%%)\n%s\n' "$key" "$try" "$foreign" "$res" >>"$WRKLOG"
		rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$res")
		mbs=$(tomib "$(awk '/^Transfer\/sec:/ {print $2}' <<<"$res")")
		n=$(awk '/requests in/ {print $1}' <<<"$res")
		# n1's CPU: % of one CPU over the run, and µs per request
		cpu=$(awk -v t=$((n1 - n0)) -v hz="$HZ" -v d="$wall" -v n="$n" \
			'BEGIN { printf "%.0f%% %.1fus/req", t / hz / d * 100, (n > 0 ? t / hz * 1e6 / n : 0) }')
		# "local=… hot=… peer=… storage=… served=…": the deltas over the run
		d=$(paste <(tr '\t' '\n' <<<"$k0") <(tr '\t' '\n' <<<"$k1") |
			awk 'BEGIN {split("local hot peer storage owners-served", name, " ")} {printf "%s%s=%d", (NR > 1 ? " " : ""), name[NR], $2 - $1}')
		errs=$(awk '/Non-2xx or 3xx responses:/ {print "non-2xx " $NF} /Socket errors:/ {print}' <<<"$res" | paste -sd' ')
		# Keep the best quiet try; the best noisy one only while no try was quiet.
		keep=0
		if [ "$foreign" -le "$QUIET_PCT" ]; then
			quiet=1
			if [ -z "${RPS[$key]:-}" ] || [ -n "${NOISY[$key]:-}" ] || better "$rps" "${RPS[$key]}"; then keep=1; fi
			unset "NOISY[$key]"
		elif [ -z "${RPS[$key]:-}" ] || { [ -n "${NOISY[$key]:-}" ] && better "$rps" "${RPS[$key]}"; }; then
			keep=1
			NOISY[$key]=1
		fi
		if [ "$keep" = 1 ]; then
			RPS[$key]=$rps MBS[$key]=$mbs TIERS[$key]=$d REQS[$key]=$n OTHER[$key]=$foreign N1CPU[$key]=$cpu
			if [ -n "$errs" ]; then NOTE[$key]=$errs; else unset "NOTE[$key]"; fi
		fi
		log "  $(printf '%-12s %9.0f req/s %8s MiB/s  (other CPU %3s%%)  n1 CPU %s; tiers: %s' "$key" "$rps" "$mbs" "$foreign" "$cpu" "$d")${errs:+  !! $errs}"
		[ "$quiet" = 0 ] || break
	done
}

# profile KEY LUA: a CPU profile of n1 during an extra run of KEY.
profile() {
	local key=$1 lua=$2 base cpid secs
	base=$OUT/cluster-cpu-${key//\//-}-$STAMP
	secs=$((DUR > 2 ? DUR - 1 : 1))
	waitquiet
	curl -s -o "$base.pprof" "http://127.0.0.1:${ADMIN[1]}/debug/pprof/profile?seconds=$secs" &
	cpid=$!
	PIDS+=("$cpid")
	sleep 0.2
	taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$lua" "http://127.0.0.1:${HTTP[1]}" >/dev/null
	wait "$cpid" || true
	go tool pprof -top -nodecount=30 "$CADDY" "$base.pprof" >"$base.top" 2>&1 || true
	go tool pprof -top -cum -nodecount=100 "$CADDY" "$base.pprof" >"$base.cum" 2>&1 || true
	log "  profile of n1, $key: $base.pprof (top lists: $base.top, $base.cum)"
	PROFILES+=("$base")
}
PROFILES=()

# --- phase 1: local and hot ------------------------------------------------------

log "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1); load average $LOAD_BEFORE"
log "phase 1: n1, n2, n3 with hot 64MiB (all on CPU $SERVER_CPU; wrk on CPU $CLIENT_CPU)"
for i in 1 2 3; do
	nodecf "$i" 64MiB >"$TMP/n$i.caddy"
done
for i in 1 2 3; do
	startnode "$i" "$TMP/n$i.caddy"
done
waitready 1 2 3

declare -A LOCAL=() REMOTE=() NUSED=()
for s in "${SIZES[@]}"; do
	for f in "$SRC"/f/"$s"-*.bin; do
		p=/f/${f##*/}
		w=$(where "$p")
		if [ "$(jq -r '.found' <<<"$w")" != true ]; then
			log "cluster.sh: n1 does not know $p: $w"
			exit 1
		fi
		if [ "$(jq -r '.local' <<<"$w")" = true ]; then
			LOCAL[$s]+=" $p"
		else
			REMOTE[$s]+=" $p"
		fi
	done
	if [ -z "${LOCAL[$s]:-}" ] || [ -z "${REMOTE[$s]:-}" ]; then
		log "cluster.sh: ${LABEL[$s]}: n1 owns ${LOCAL[$s]:-none of the files}, the others ${REMOTE[$s]:-none}; try a larger -n"
		exit 1
	fi
	# The same number of files of each kind, so that the bytes cycled
	# through (the cache footprint: 8 MiB for 8 files of 1 MiB) are alike.
	nl=$(wc -w <<<"${LOCAL[$s]}")
	nr=$(wc -w <<<"${REMOTE[$s]}")
	k=$((nl < nr ? nl : nr))
	LOCAL[$s]=$(tr ' ' '\n' <<<"${LOCAL[$s]}" | grep . | head -n "$k" | paste -sd' ')
	REMOTE[$s]=$(tr ' ' '\n' <<<"${REMOTE[$s]}" | grep . | head -n "$k" | paste -sd' ')
	NUSED[$s]=$k
	log "  ${LABEL[$s]}: n1 owns $nl, n2/n3 own $nr; measuring $k of each"
	# shellcheck disable=SC2086
	luascript "$TMP/local-$s.lua" ${LOCAL[$s]}
	# shellcheck disable=SC2086
	luascript "$TMP/remote-$s.lua" ${REMOTE[$s]}
done

# verify PATH...: n1 sends each file's exact bytes with status 200.
verify() {
	local p code
	for p in "$@"; do
		code=$(curl -sS --max-time 10 -o "$TMP/body" -w '%{http_code}' "http://127.0.0.1:${HTTP[1]}$p")
		if [ "$code" != 200 ] || ! cmp -s "$TMP/body" "$SRC$p"; then
			log "cluster.sh: n1 $p: status $code, $(stat -c %s "$TMP/body") bytes, not the file's bytes"
			exit 1
		fi
	done
}

# Bodies once (a remote file's first request is a peer fetch), then make
# every remote file hot: two more requests each; /where must say resident.
for s in "${SIZES[@]}"; do
	# shellcheck disable=SC2086
	verify ${LOCAL[$s]} ${REMOTE[$s]}
	for p in ${REMOTE[$s]}; do
		for k in 1 2 3; do verify "$p"; done
		if [ "$(where "$p" | jq -r '.resident')" != true ]; then
			log "cluster.sh: $p is not resident in n1's hot cache after 4 requests: $(where "$p")"
			exit 1
		fi
	done
done
log "  bodies verified (curl + cmp); every remote file resident in n1's hot cache"
HOT1=$(status 1 | jq -c '.groups[0].hot')

for r in $(seq 1 "$REPEATS"); do
	for s in "${SIZES[@]}"; do
		measure "local/$s" "$TMP/local-$s.lua"
		measure "hot/$s" "$TMP/remote-$s.lua"
	done
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }
for s in "${SIZES[@]}"; do
	if awk -v r="$(ratio "${RPS[hot/$s]}" "${RPS[local/$s]}")" -v t="$HOT_TARGET" 'BEGIN { exit !(r < t) }'; then
		profile "local/$s" "$TMP/local-$s.lua"
		profile "hot/$s" "$TMP/remote-$s.lua"
	fi
done

# --- phase 2: remote, n1 restarted with a hot cache too small for any file --------

log "phase 2: n1 restarted with hot 1KiB (no file fits: an entry costs its size + 256 B)"
stopnode 1
nodecf 1 1KiB >"$TMP/n1-nohot.caddy"
startnode 1 "$TMP/n1-nohot.caddy"
waitready 1 2 3
for s in "${SIZES[@]}"; do
	# shellcheck disable=SC2086
	verify ${LOCAL[$s]} ${REMOTE[$s]} ${REMOTE[$s]} ${REMOTE[$s]}
	for p in ${REMOTE[$s]}; do
		if [ "$(where "$p" | jq -r '.resident')" != false ]; then
			log "cluster.sh: $p is resident on n1 with hot 1KiB: $(where "$p")"
			exit 1
		fi
	done
done
log "  bodies verified again; no remote file resident on n1"
for r in $(seq 1 "$REPEATS"); do
	for s in "${SIZES[@]}"; do
		measure "local2/$s" "$TMP/local-$s.lua"
		measure "remote/$s" "$TMP/remote-$s.lua"
	done
done
HOT2=$(status 1 | jq -c '.groups[0].hot')
PEERERR=$(status 1 | jq '[.groups[].peer_errors] | add')
stopnode 1
stopnode 2
stopnode 3
LOAD_AFTER=$(loadavg)

# --- peering benchmark ------------------------------------------------------------

PEERB=""
if [ "$PEERBENCH" = 1 ]; then
	log "peering: go test -run='^\$' -bench=TransferPaired -benchtime=1x ./peering/"
	waitquiet
	PEERB=$(cd "$REPO" && go test -run='^$' -bench=TransferPaired -benchtime=1x ./peering/ 2>&1) || {
		log "cluster.sh: the peering benchmark failed:"
		log "$PEERB"
	}
fi

# --- table ----------------------------------------------------------------------------

verdict() { awk -v r="$1" -v t="$HOT_TARGET" 'BEGIN { if (r == "-") print "n/a"; else print (r + 0 >= t ? "met" : "MISSED") }'; }
{
	echo "shardcache cluster bench $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
	echo "$(go version | cut -d' ' -f3), Caddy $("$CADDY" version | cut -d' ' -f1), CGO_ENABLED=0 ${BUILD[*]:1}"
	echo "3 nodes (SAN ${SAN_HOSTS[0]}-${SAN_HOSTS[2]##*.}:$SAN_PORT, memory 256MiB, hot 64MiB; phase 2: n1 hot 1KiB) all on CPU $SERVER_CPU;"
	echo "wrk -t1 -c$CONNS -d${DUR}s (after ${WARM}s warm-up, best of $REPEATS) on CPU $CLIENT_CPU against n1, cycling through the files of a kind"
	echo "($NFILES random files of each size; per size as many local as remote files: $(for s in "${SIZES[@]}"; do printf '%s %s; ' "${LABEL[$s]}" "${NUSED[$s]}"; done | sed 's/; $//'))"
	echo "load average before $LOAD_BEFORE, after $LOAD_AFTER"
	echo
	printf '%-7s | %8s %8s | %8s %8s | %8s %8s | %9s %6s | %8s %8s\n' \
		size local MiB/s hot MiB/s remote MiB/s hot/local target remote/l2 local2
	printf -- '-%.0s' $(seq 1 104); echo
	for s in "${SIZES[@]}"; do
		hl=$(ratio "${RPS[hot/$s]:-}" "${RPS[local/$s]:-}")
		printf '%-7s | %8s %8s | %8s %8s | %8s %8s | %9s %6s | %8s %8s\n' "${LABEL[$s]}" \
			"$(cell "local/$s")" "${MBS[local/$s]:--}" "$(cell "hot/$s")" "${MBS[hot/$s]:--}" \
			"$(cell "remote/$s")" "${MBS[remote/$s]:--}" "$hl" "$(verdict "$hl")" \
			"$(ratio "${RPS[remote/$s]:-}" "${RPS[local2/$s]:-}")" "$(cell "local2/$s")"
	done
	echo
	echo "local, hot: phase 1; remote and local2: phase 2 (n1 restarted), remote/l2 = remote ÷ local2."
	echo "Per kept run: wrk's request count; n1's CPU (% of one CPU, CPU time per request); n1's tier"
	echo "counters (owners-served: fetches n2+n3 answered for n1: fewer than n1's peer requests when coalesced):"
	for s in "${SIZES[@]}"; do
		for ph in local hot local2 remote; do
			k=$ph/$s
			printf '  %-10s %7s req, other CPU %3s%%, n1 CPU %-17s %s\n' "$k" "${REQS[$k]:--}" "${OTHER[$k]:--}" "${N1CPU[$k]:--}" "${TIERS[$k]:--}"
		done
	done
	echo "n1 hot cache after warming (phase 1): $HOT1"
	echo "n1 hot cache at the end (phase 2):    $HOT2; peer_errors $PEERERR"
	if [ "${#NOISY[@]}" -gt 0 ]; then
		echo "~ ${#NOISY[@]} cell(s) had no quiet try (other processes used over $QUIET_PCT% of a CPU in all $QUIET_TRIES): unreliable"
	fi
	for k in "${!NOTE[@]}"; do
		echo "!! $k: ${NOTE[$k]}"
	done
	for b in "${PROFILES[@]}"; do
		echo
		echo "profile ${b##*/}.pprof: $(grep -m1 -E '^Duration' "$b.cum" || true)"
		echo "  shardcache functions by cumulative share (all: $b.cum; flat top 30: $b.top):"
		grep -m1 -E '^ +flat' "$b.cum" || true
		grep -E 'shardcache' "$b.cum" | head -n 20 || true
	done
	if [ -n "$PEERB" ]; then
		echo
		echo "go test -run='^\$' -bench=TransferPaired -benchtime=1x ./peering/"
		grep -E '^(Benchmark|goos|goarch|cpu|ok|FAIL|---)' <<<"$PEERB"
	fi
} | tee "$OUT/cluster-table-$STAMP.txt"
