#!/usr/bin/env bash
# bench/large.sh: one 1 GiB file (random bytes) in a two-node shardcache
# cluster on loopback (SAN 127.0.0.2 and 127.0.0.3; group "big", memory
# 2GiB, hot 1GiB each). Items over shard.ChunkSize (4 MiB) are held in
# chunks; a non-owner fetches only the chunks a response needs, 2 ahead in
# parallel. Measured with curl (time_total, speed_download); every whole
# GET is done twice, body discarded (timed) and hashed (SHA-256 checked):
#   1. owner's RSS against the bytes it holds
#   2. the whole file from the owner (local, from its chunks)
#   3. the whole file from the non-owner three times (1st and 2nd: every
#      chunk from the owner, the 2nd admitting them to the hot cache;
#      3rd: hot), the non-owner's VmRSS/VmHWM after each; the three hashed
#      first, then discarded, the non-owner restarted before each series;
#      after each, the owner's GET again (a check on drift)
#   4. 1 KiB at offset 700 MiB from a restarted non-owner: one chunk moves
#
#   bench/large.sh [-c rev] [-r n] [-h]
#   -c rev: build git revision rev, not the work tree; -r n: the timed GETs
#   (owner) and series of three (non-owner) n times, keep the best (default 3)
# Environment: SAN_PORT (default 17950), PORT_WAIT (seconds to wait for the
# SAN ports to be free, default 60), QUIET_WAIT (seconds to wait for a
# quiet machine before each measured GET, default 10), QUIET_PCT (default 10).
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
REV=""    # build this git revision (git archive) instead of the work tree
REPEATS=3 # discarded-body GETs (owner) and series (non-owner): keep the best
while getopts "c:r:h" opt; do
	case $opt in
	c) REV=$OPTARG ;;
	r) REPEATS=$OPTARG ;;
	h) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done

SERVER_CPU=1 # both Caddys
CLIENT_CPU=0 # curl
SAN_PORT=${SAN_PORT:-17950}
SAN_HOSTS=(127.0.0.2 127.0.0.3)
QUIET_PCT=${QUIET_PCT:-10}
QUIET_WAIT=${QUIET_WAIT:-10}
SIZE=$((1 << 30))
CHUNK=$((4 << 20))
RANGE_OFF=$((700 << 20))
RANGE_LEN=1024
NEED_MEM_MIB=3584 # two nodes holding 1 GiB each, the 1 GiB file in the page cache, slack
NEED_DISK_MIB=2048 # the file (hard-linked into both roots), the binary, slack

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$BENCH/lib.sh" # REPO, OUT, STAMP and the helpers

# --- resources -----------------------------------------------------------------

avail_mib=$(free -m | awk '/^Mem:/ {print $7}')
disk_mib=$(df -Pm "${TMPDIR:-/tmp}" | awk 'NR == 2 {print $4}')
if [ "$avail_mib" -lt "$NEED_MEM_MIB" ] || [ "$disk_mib" -lt "$NEED_DISK_MIB" ]; then
	log "large.sh: needs about $NEED_MEM_MIB MiB of available memory and $NEED_DISK_MIB MiB of disk in ${TMPDIR:-/tmp};"
	log "  free -m says $avail_mib MiB available, df says $disk_mib MiB free: not running"
	exit 1
fi

bench_setup large.sh Caddys shardlarge go taskset curl jq cmp ss sha256sum dd python3
START=$(date +%s)
LOAD_BEFORE=$(loadavg)
UPTIME_BEFORE=$(uptime)

# --- ports ---------------------------------------------------------------------

declare -A ADMIN=() HTTP=() NPID=()
for i in 1 2; do
	freeport ADMIN[$i]
	freeport HTTP[$i]
done
PORT_WAIT=${PORT_WAIT:-60}
sanwait "${SAN_HOSTS[*]} (set SAN_PORT):"

# --- build and file ------------------------------------------------------------

mkdir -p "$TMP/bin"
SRCDIR=$REPO
WHAT="work tree of $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- . ':!bench' 2>/dev/null || echo ' + uncommitted changes')"
if [ -n "$REV" ]; then
	SRCDIR=$TMP/tree
	mkdir -p "$SRCDIR"
	git -C "$REPO" archive "$REV" | tar -x -C "$SRCDIR"
	WHAT="commit $(git -C "$REPO" rev-parse --short "$REV^{commit}")"
fi
log "building ./cmd/caddy ($WHAT): CGO_ENABLED=0 ${BUILD[*]}"
(cd "$SRCDIR" && CGO_ENABLED=0 "${BUILD[@]}" -o "$TMP/bin/caddy" ./cmd/caddy)
CADDY=$TMP/bin/caddy

log "writing 1 GiB of random bytes"
SRC=$TMP/src/big.bin
mkdir -p "$TMP/src"
head -c "$SIZE" /dev/urandom >"$SRC"
WANT=$(sha256sum "$SRC" | cut -d' ' -f1)
# On disk now, so that its writeback (kernel threads) does not run during
# the measurements.
sync "$SRC"
# Each node its own root; the file hard-linked into both (same bytes, no
# second GiB on disk or in the page cache).
for i in 1 2; do
	mkdir -p "$TMP/root$i"
	ln "$SRC" "$TMP/root$i/big.bin" 2>/dev/null || cp "$SRC" "$TMP/root$i/big.bin"
done

SHARDCACHE_SECRET=$("$CADDY" shardcache secret)
export SHARDCACHE_SECRET

nodecf() { # nodecf I: the Caddyfile of node nI
	local i=$1 j=$((3 - $1))
	cat <<EOF
{
	admin 127.0.0.1:${ADMIN[$i]}
	persist_config off
	shardcache {
		node n$i ${SAN_HOSTS[$((i - 1))]}:$SAN_PORT
		peer n$j ${SAN_HOSTS[$((j - 1))]}:$SAN_PORT
		secret {env.SHARDCACHE_SECRET}
	}
}

http://127.0.0.1:${HTTP[$i]} {
	bind 127.0.0.1
	shardcache {
		root $TMP/root$i
		group big
		memory 2GiB
		hot 1GiB
	}
}
EOF
}

# --- nodes -----------------------------------------------------------------------

# startnode, stopnode, status and waitready (lib.sh): nodes n1 and n2,
# each with the Caddyfile $TMP/nI.caddy.
for i in 1 2; do
	nodecf "$i" >"$TMP/n$i.caddy"
done

# grp I: node nI's status of group "big"
grp() { status "$1" | jq -c '.groups[] | select(.group == "big")'; }

mem() { # mem PID FIELD: VmRSS or VmHWM in MiB
	awk -v f="$2:" '$1 == f {printf "%.0f", $2 / 1024}' "/proc/$1/status"
}
served() { grp "$OWN" | jq '.served_bytes_to_peers'; }
# tiers I: "local=B hot=B peer=B storage=B" (bytes each tier answered on nI)
tiers() {
	grp "$1" | jq -r '.tiers | [ "local", "hot", "peer", "storage" ] as $k |
		[ $k[] as $t | "\($t)=\(.[$t].bytes // 0)" ] | join(" ")'
}
tierdelta() { # tierdelta BEFORE AFTER
	paste <(tr ' ' '\n' <<<"$1") <(tr ' ' '\n' <<<"$2") | awk '{
		split($1, a, "="); split($2, b, "=")
		d = b[2] - a[2]; if (d) out = out (out ? " " : "") a[1] "=" sprintf("%.0f MiB", d / 1048576)
	} END { print (out ? out : "none") }'
}

# The client-side SHA-256 (OpenSSL's, through Python's hashlib: about
# 2 GB/s here, against 0.5 GB/s for coreutils' sha256sum) of what curl
# pipes to it, and the byte count.
cat >"$TMP/sha256.py" <<'PY'
import hashlib, sys
h, n, buf = hashlib.sha256(), 0, bytearray(1 << 20)
mv, f = memoryview(buf), sys.stdin.buffer.raw
while True:
    k = f.readinto(buf)
    if not k:
        break
    h.update(mv[:k])
    n += k
print(h.hexdigest(), n)
PY

# fetch I MODE [RANGE]: GET /big.bin from node nI with curl on CLIENT_CPU,
# after waiting for a quiet machine. MODE: null (the body is discarded:
# the server's speed), hash (piped to sha256.py, also on CLIENT_CPU: every
# byte checked, but the client then needs about 1 s of CPU per GiB) or
# file ($TMP/body). Sets CODE, SECS, BPS, GOT, SUM (hash), OTHER (the
# CPU time of processes other than the Caddys and the client, % of one
# CPU over the GET), CPUS (the CPU time of owner and non-owner) and FLT
# (the non-owner's minor page faults).
fetch() {
	local i=$1 mode=$2 rng=${3:-} w s0 s1 c0 c1 o0 o1 n0 n1 f0 f1 out args=()
	[ -z "$rng" ] || args=(-H "Range: bytes=$rng")
	out=/dev/null
	[ "$mode" = file ] && out=$TMP/body
	[ "$mode" = hash ] && out=-
	rm -f "$TMP/body" "$TMP/sum"
	args+=(-sS --max-time 120 -o "$out" -w '%{stderr}%{http_code} %{time_total} %{speed_download} %{size_download}\n')
	waitquiet
	o0=$(proc_ticks "${NPID[$OWN]}") n0=$(proc_ticks "${NPID[$OTH]}") f0=$(minflt "${NPID[$OTH]}")
	s0=$(sys_ticks)
	c0=$(proc_ticks "${NPID[@]}")
	if [ "$mode" = hash ]; then
		{ TIMEFORMAT='%3U %3S'; time { taskset -c "$CLIENT_CPU" curl "${args[@]}" "http://127.0.0.1:${HTTP[$i]}/big.bin" 2>"$TMP/curl.w" |
			taskset -c "$CLIENT_CPU" python3 "$TMP/sha256.py" >"$TMP/sum"; }; } 2>"$TMP/curl.time"
	else
		{ TIMEFORMAT='%3U %3S'; time taskset -c "$CLIENT_CPU" curl "${args[@]}" "http://127.0.0.1:${HTTP[$i]}/big.bin" 2>"$TMP/curl.w"; } 2>"$TMP/curl.time"
	fi
	s1=$(sys_ticks)
	c1=$(proc_ticks "${NPID[@]}")
	o1=$(proc_ticks "${NPID[$OWN]}") n1=$(proc_ticks "${NPID[$OTH]}") f1=$(minflt "${NPID[$OTH]}")
	read -r CODE SECS BPS GOT < <(tail -n 1 "$TMP/curl.w")
	SUM=$([ -s "$TMP/sum" ] && cut -d' ' -f1 "$TMP/sum" || echo none)
	w=$(tail -n 1 "$TMP/curl.time" | awk '{print $1 + $2}')
	# (in clock ticks: meaningless for a GET of a fraction of a second)
	if awk -v d="$SECS" 'BEGIN { exit !(d < 0.2) }'; then
		OTHER=n/a
	else
		OTHER="$(foreign_pct "$s0" "$s1" "$c0" "$c1" "$w" "$SECS")%"
	fi
	CPUS=$(awk -v o=$((o1 - o0)) -v n=$((n1 - n0)) -v hz="$HZ" 'BEGIN { printf "CPU s owner %.2f, non-owner %.2f", o / hz, n / hz }')
	FLT=$((f1 - f0))
}
minflt() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $8}'; } # minor page faults

checkwhole() { # checkwhole WHAT MODE: a whole-file GET answered 200 and (hash) the file's bytes
	if [ "$CODE" != 200 ] || [ "$GOT" != "$SIZE" ] || { [ "$2" = hash ] && [ "$SUM" != "$WANT" ]; }; then
		log "large.sh: $1: status $CODE, $GOT bytes, sha256 $SUM; want 200, $SIZE bytes, sha256 $WANT"
		exit 1
	fi
}

mbs() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1e6 }'; }

declare -a ROWS=()
row() { ROWS+=("$(printf '%-40s | %10s | %8s | %14s | %11s | %s' "$@")"); }

# --- 1. start, owner ---------------------------------------------------------------

log "load before: $UPTIME_BEFORE"
log "starting n1 and n2 (both on CPU $SERVER_CPU; curl on CPU $CLIENT_CPU)"
startnode 1 "$TMP/n1.caddy"
startnode 2 "$TMP/n2.caddy"
T0=$(date +%s.%N)
waitready 1 2
READY=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
W=$(curl -fsS --max-time 5 "http://127.0.0.1:${ADMIN[1]}/shardcache/where?path=/big.bin" | jq -c '.[] | select(.group == "big")')
OWNER=$(jq -r '.owner' <<<"$W")
case $OWNER in
n1) OWN=1 OTH=2 ;;
n2) OWN=2 OTH=1 ;;
*) log "large.sh: /shardcache/where on n1: $W"; exit 1 ;;
esac
WO=$(curl -fsS --max-time 5 "http://127.0.0.1:${ADMIN[$OWN]}/shardcache/where?path=/big.bin" | jq -c '.[] | select(.group == "big")')
if [ "$(jq -r '.local and .resident and .found' <<<"$WO")" != true ] || [ "$(jq -r '.size' <<<"$WO")" != "$SIZE" ]; then
	log "large.sh: the owner's /where does not say local, resident, $SIZE bytes: $WO"
	exit 1
fi
G=$(grp "$OWN")
HELD=$(jq '.primed_bytes' <<<"$G")
OWN_RSS=$(mem "${NPID[$OWN]}" VmRSS)
OTH_RSS0=$(mem "${NPID[$OTH]}" VmRSS)
log "1. ready ${READY}s after starting; owner n$OWN (SAN ${SAN_HOSTS[$((OWN - 1))]}), non-owner n$OTH"
log "   owner: $(jq -c '{primed_items, primed_bytes}' <<<"$G"); VmRSS $OWN_RSS MiB; non-owner VmRSS $OTH_RSS0 MiB"
row "1 ready; owner RSS vs bytes held" "${READY} s" "" "-" "$OTH_RSS0/$(mem "${NPID[$OTH]}" VmHWM)" \
	"owner n$OWN holds $HELD B ($((HELD >> 20)) MiB) primed, VmRSS $OWN_RSS MiB ($(awk -v r="$OWN_RSS" -v h="$HELD" 'BEGIN { printf "%.3f", r * 1048576 / h }')x)"

# --- 2. whole file from the owner ------------------------------------------------------

b0=$(served); k0=$(tiers "$OWN")
fetch "$OWN" hash
checkwhole "owner GET (hashed)" hash
LOCAL_H=$BPS
log "2. owner GET, hashed: $CODE, $(mbs "$BPS") MB/s (${SECS}s), sha256 ok; other CPU ${OTHER}"
# ownerget CHECK WHAT: a whole-file GET from the owner, body discarded;
# checkwhole CHECK, logged as WHAT.
ownerget() {
	fetch "$OWN" null
	checkwhole "$1" null
	log "   $2, discarded: $CODE, $(mbs "$BPS") MB/s (${SECS}s); $CPUS; other CPU ${OTHER}"
}
LOCAL_BPS=0 all=""
for r in $(seq 1 "$REPEATS"); do
	ownerget "owner GET" "owner GET $r"
	all+="${all:+/}$(mbs "$BPS")"
	if better "$BPS" "$LOCAL_BPS"; then LOCAL_BPS=$BPS lnote="${SECS}s; $CPUS; other CPU ${OTHER}"; fi
done
sleep 0.1; b1=$(served); k1=$(tiers "$OWN")
log "   owner served its peer $((b1 - b0)) B over these GETs; owner tiers: $(tierdelta "$k0" "$k1")"
row "2 owner GET (local, from chunks)" "$(mbs "$LOCAL_BPS") MB/s" "$(mbs "$LOCAL_H")" "$((b1 - b0))" "-" "best of $all; $lnote"

# --- 3. whole file from the non-owner, three times ----------------------------------------
# First with every body hashed, then REPEATS times with the bodies
# discarded (the servers' speed), the non-owner restarted before each
# series (an empty hot cache); per GET the best series' numbers are kept.

NAMES=("1st: all remote" "2nd: remote, admits" "3rd: hot")
declare -A R_BPS=() R_DELTA=() R_MEM=() R_NOTE=()
series() { # series MODE KEY
	local mode=$1 key=$2 n b0 b1 k0 k1 rss hwm hot
	for n in 1 2 3; do
		b0=$(served); k0=$(tiers "$OTH")
		fetch "$OTH" "$mode"
		sleep 0.1; b1=$(served); k1=$(tiers "$OTH")
		rss=$(mem "${NPID[$OTH]}" VmRSS)
		hwm=$(mem "${NPID[$OTH]}" VmHWM)
		checkwhole "non-owner GET $n ($mode)" "$mode"
		hot=$(grp "$OTH" | jq -c '.hot | {Items, Bytes, Admits, Rejects, Evicts}')
		log "3.$n non-owner GET, $mode: $CODE, $(mbs "$BPS") MB/s (${SECS}s)$([ "$mode" = hash ] && echo ", sha256 ok"); owner served $((b1 - b0)) B; non-owner VmRSS $rss MiB, VmHWM $hwm MiB"
		log "    non-owner tiers: $(tierdelta "$k0" "$k1"); hot cache $hot; $CPUS; non-owner minor faults $FLT; other CPU ${OTHER}"
		R_BPS[$key,$n]=$BPS R_DELTA[$key,$n]=$((b1 - b0)) R_MEM[$key,$n]=$rss/$hwm
		R_NOTE[$key,$n]="${SECS}s; tiers $(tierdelta "$k0" "$k1"); $CPUS; n-o minor faults $FLT; other CPU ${OTHER}"
	done
}
restart_nonowner() {
	log "   restarting the non-owner n$OTH (an empty hot cache)"
	stopnode "$OTH"
	startnode "$OTH" "$TMP/n$OTH.caddy"
	waitready 1 2
}
series hash h
HOT_H=$(grp "$OTH" | jq -c '.hot')
PEERERR_H=$(grp "$OTH" | jq '.peer_errors')
LOCAL2=0 all2=""
for r in $(seq 1 "$REPEATS"); do
	restart_nonowner
	series null "$r"
	# the owner's GET again, right after the hot one: a check on drift
	ownerget "owner GET again" "owner GET again"
	all2+="${all2:+/}$(mbs "$BPS")"
	if better "$BPS" "$LOCAL2"; then LOCAL2=$BPS l2note="${SECS}s; $CPUS; other CPU ${OTHER}"; fi
done
HOT3=$(grp "$OTH" | jq -c '.hot')
PEERERR=$(grp "$OTH" | jq '.peer_errors')
declare -a REM_BPS=() REM_H=()
for n in 1 2 3; do
	best=1 all="" deltas=""
	for r in $(seq 1 "$REPEATS"); do
		all+="${all:+/}$(mbs "${R_BPS[$r,$n]}")"
		deltas+=" ${R_DELTA[$r,$n]}"
		if better "${R_BPS[$r,$n]}" "${R_BPS[$best,$n]}"; then best=$r; fi
	done
	REM_BPS[$n]=${R_BPS[$best,$n]} REM_H[$n]=${R_BPS[h,$n]}
	d=${R_DELTA[$best,$n]}
	# every series (hashed too) should have moved the same bytes
	for x in $deltas "${R_DELTA[h,$n]}"; do
		if [ "$x" != "$d" ]; then d="$d (!! series: $deltas, hashed ${R_DELTA[h,$n]})"; break; fi
	done
	row "3.$n non-owner GET (${NAMES[$((n - 1))]})" "$(mbs "${REM_BPS[$n]}") MB/s" "$(mbs "${REM_H[$n]}")" "$d" "${R_MEM[$best,$n]}" \
		"best of $all; ${R_NOTE[$best,$n]}; hashed: RSS/HWM ${R_MEM[h,$n]}"
done
row "3.4 owner GET again (after each series)" "$(mbs "$LOCAL2") MB/s" "" "" "-" "best of $all2; $l2note"

# --- 4. 1 KiB at 700 MiB from a restarted non-owner -------------------------------------

log "4. 1 KiB at 700 MiB"
restart_nonowner
rss0=$(mem "${NPID[$OTH]}" VmRSS)
RNG="$RANGE_OFF-$((RANGE_OFF + RANGE_LEN - 1))"
b0=$(served)
fetch "$OTH" file "$RNG"
sleep 0.2; b1=$(served)
rss=$(mem "${NPID[$OTH]}" VmRSS)
hwm=$(mem "${NPID[$OTH]}" VmHWM)
dd if="$SRC" of="$TMP/slice" bs=64K iflag=skip_bytes,count_bytes skip="$RANGE_OFF" count="$RANGE_LEN" status=none
if [ "$CODE" != 206 ] || [ "$GOT" != "$RANGE_LEN" ] || ! cmp -s "$TMP/body" "$TMP/slice"; then
	log "large.sh: Range $RNG on n$OTH: status $CODE, $GOT bytes, not the file's bytes $RNG"
	exit 1
fi
MS=$(awk -v s="$SECS" 'BEGIN { printf "%.1f", s * 1000 }')
DELTA=$((b1 - b0))
VERDICT=$([ "$DELTA" = "$CHUNK" ] && echo "= 1 chunk, as it must" || echo "!! want exactly $CHUNK")
log "   Range $RNG: $CODE, $GOT bytes (cmp ok) in $MS ms; owner served $DELTA B $VERDICT; non-owner VmRSS $rss0 -> $rss MiB"
row "4 1 KiB Range @700 MiB (fresh n$OTH)" "$MS ms" "" "$DELTA" "$rss/$hwm" "206, 1024 B equal to the file's (cmp); $VERDICT; other CPU ${OTHER}"

stopnode 1
stopnode 2
LOAD_AFTER=$(loadavg)
ELAPSED=$(($(date +%s) - START))

# --- 5. table ------------------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
{
	echo "shardcache large-file bench $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
	echo "$(go version | cut -d' ' -f3), Caddy $("$CADDY" version | cut -d' ' -f1), CGO_ENABLED=0 ${BUILD[*]:1}; built from the $WHAT"
	echo "2 nodes (SAN ${SAN_HOSTS[0]}, ${SAN_HOSTS[1]}:$SAN_PORT; group big, memory 2GiB, hot 1GiB), both Caddys pinned to CPU $SERVER_CPU;"
	echo "curl pinned to CPU $CLIENT_CPU; 1 file of 1 GiB (random bytes), owner n$OWN; chunks of 4 MiB, 2 read ahead"
	echo "MB/s: curl's speed_download / 10^6, body discarded (the servers' speed), best of $REPEATS (non-owner: $REPEATS series"
	echo "  of three GETs, the non-owner restarted before each); hashed: one GET (series) with the body piped to"
	echo "  SHA-256 on CPU $CLIENT_CPU, every body matched the file's sha256; the non-owner restarted again before step 4"
	echo "owner served B: delta of the owner's served_bytes_to_peers (group big); RSS/HWM: non-owner VmRSS/VmHWM after the step"
	echo "load average before $LOAD_BEFORE, after $LOAD_AFTER; run took ${ELAPSED}s"
	echo
	printf '%-40s | %10s | %8s | %14s | %11s | %s\n' step "MB/s or ms" "hashed" "owner served B" "n-o RSS/HWM" notes
	printf -- '-%.0s' $(seq 1 154); echo
	printf '%s\n' "${ROWS[@]}"
	echo
	echo "remote/local $(ratio "${REM_BPS[1]}" "$LOCAL_BPS") (1st non-owner GET / owner GET, step 2), hot/local $(ratio "${REM_BPS[3]}" "$LOCAL_BPS") (3rd / owner GET), 2nd/local $(ratio "${REM_BPS[2]}" "$LOCAL_BPS");"
	echo "  against the owner's GETs in step 3.4: remote/local $(ratio "${REM_BPS[1]}" "$LOCAL2"), hot/local $(ratio "${REM_BPS[3]}" "$LOCAL2"), 2nd/local $(ratio "${REM_BPS[2]}" "$LOCAL2")"
	echo "  hashed: remote/local $(ratio "${REM_H[1]}" "$LOCAL_H"), hot/local $(ratio "${REM_H[3]}" "$LOCAL_H"), 2nd/local $(ratio "${REM_H[2]}" "$LOCAL_H")"
	echo "non-owner hot cache after the 3rd GET: $HOT3; peer_errors $PEERERR"
	echo "  (hashed series: $HOT_H; peer_errors $PEERERR_H)"
} | tee "$OUT/large-$STAMP.txt"
