#!/usr/bin/env bash
# bench/membership.sh: a fourth node joining and leaving a three-node
# cluster found in DNS, with a 1 GiB site, under load. A measurement, not a
# test.
#
#   bench/membership.sh [-r rate] [-c conns] [-H secs] [-h]
#   -r rate: requests/s per load target (default 40); -c conns: workers per
#   target (default 2); -H secs: length of the quiet phases (default 8)
#
# Site: bench/gentree -prime, 1 GiB of files of 1 KiB-5 MiB (log-distributed
# sizes; the few above 4 MiB are held in chunks), written once and copied
# with `cp -a` (same sizes and mtimes: handoff needs them) to one root per
# node. DNS: examples/dns/dnsserver on 127.0.0.1, answering SRV records of
# _shardcache._udp.bench.shardcache.test from a file the script edits.
# Nodes n1-n4 (SAN 127.0.33.2-5:<SAN_PORT>, `peers srv ... { refresh 1s;
# grace 5s }`, no peer line; group site, memory 1GiB, hot 64MiB, header
# X-Node) and a director (observer, 127.0.33.9, `reverse_proxy { dynamic
# shardcache; lb_policy shardcache }`), all Caddys pinned to CPU 1; the
# load (bench/membershipload: Zipf s = 1.1 over the site's files, on the
# director and directly on n1, n2, n3) and the DNS server on CPU 0.
# Phases: before; join (n4's records added, n4 started, until every node
# and the director list the ring of four, ready, and n1-n3 logged their
# share moved); between; leave (n4's records removed, until n1-n3 are
# ready on the ring of three and took their share back; then n4 stopped);
# after. Prints a table, also written to bench/out/membership-<time>.txt.
# Environment: SAN_PORT (default 17966), PORT_WAIT (default 60).
set -euo pipefail

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
RATE=40
CONNS=2
HOLD=8
while getopts "r:c:H:h" opt; do
	case $opt in
	r) RATE=$OPTARG ;;
	c) CONNS=$OPTARG ;;
	H) HOLD=$OPTARG ;;
	h) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done

SERVER_CPU=1 # every Caddy
CLIENT_CPU=0 # the load and the DNS server
SAN_PORT=${SAN_PORT:-17966}
SAN_HOSTS=(127.0.33.2 127.0.33.3 127.0.33.4 127.0.33.5)
DIRECTOR_SAN=127.0.33.9:$SAN_PORT
PORT_WAIT=${PORT_WAIT:-60}
SIZE=$((1 << 30))
SRV=_shardcache._udp.bench.shardcache.test
NEED_MEM_MIB=6144  # 4 copies in the page cache, ~1.4 GiB held in the nodes, slack
NEED_DISK_MIB=5120 # 4 copies of the site, the binaries

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$BENCH/lib.sh" # REPO, OUT, STAMP and the helpers

avail_mib=$(free -m | awk '/^Mem:/ {print $7}')
disk_mib=$(df -Pm /tmp | awk 'NR == 2 {print $4}')
if [ "$avail_mib" -lt "$NEED_MEM_MIB" ] || [ "$disk_mib" -lt "$NEED_DISK_MIB" ]; then
	log "membership.sh: needs about $NEED_MEM_MIB MiB of available memory and $NEED_DISK_MIB MiB of disk in /tmp;"
	log "  free -m says $avail_mib MiB available, df says $disk_mib MiB free: not running"
	exit 1
fi

bench_setup membership.sh Caddys shardmember go taskset curl jq ss awk cp
START=$(date +%s)
LOAD_BEFORE=$(loadavg)

# --- ports -----------------------------------------------------------------------

declare -A ADMIN=() HTTP=() NPID=()
for i in 1 2 3 4 d; do
	freeport ADMIN[$i]
	freeport HTTP[$i]
done
while :; do # the DNS server's port: free on UDP and TCP
	freeport DNSPORT
	ss -Huan "sport = :$DNSPORT" | grep -q . || break
done
sanwait "${SAN_HOSTS[*]} (set SAN_PORT):"

# --- build, site ---------------------------------------------------------------------

mkdir -p "$TMP/bin"
WHAT="work tree of $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- . ':!bench' 2>/dev/null || echo ' + uncommitted changes')"
log "building ./cmd/caddy ($WHAT), examples/dns/dnsserver, bench/gentree, bench/membershipload"
(cd "$REPO" && CGO_ENABLED=0 "${BUILD[@]}" -o "$TMP/bin/caddy" ./cmd/caddy &&
	CGO_ENABLED=0 go build -trimpath -o "$TMP/bin/dnsserver" ./examples/dns/dnsserver &&
	CGO_ENABLED=0 go build -trimpath -o "$TMP/bin/gentree" ./bench/gentree &&
	CGO_ENABLED=0 go build -trimpath -o "$TMP/bin/load" ./bench/membershipload)
CADDY=$TMP/bin/caddy
LOAD=$TMP/bin/load

log "writing the 1 GiB site and three copies (cp -a)"
"$TMP/bin/gentree" -prime "$TMP/root1" -total "$SIZE" -min 1024 -max $((5 << 20)) >"$TMP/gentree.out"
for i in 2 3 4; do cp -a "$TMP/root1" "$TMP/root$i"; done
sync
(cd "$TMP/root1" && find . -type f -printf '/%P %s\n' | sort) >"$TMP/paths"
NFILES=$(wc -l <"$TMP/paths")
NBIG=$(awk -v c=$((4 << 20)) '$2 > c' "$TMP/paths" | wc -l)
SITEB=$(awk '{s += $2} END {print s}' "$TMP/paths")
"$LOAD" -paths "$TMP/paths" -shares >"$TMP/shares"
log "site: $NFILES files, $SITEB bytes, $NBIG over 4 MiB"

SHARDCACHE_SECRET=$("$CADDY" shardcache secret)
export SHARDCACHE_SECRET

# --- DNS ---------------------------------------------------------------------------------

RECORDS=$TMP/records.txt
records() { # records I...: the SRV and A records of nodes nI
	local i
	for i in "$@"; do
		echo "$SRV. 1 IN SRV 0 0 $SAN_PORT n$i.bench.shardcache.test."
		echo "n$i.bench.shardcache.test. 1 IN A ${SAN_HOSTS[$((i - 1))]}"
	done >"$RECORDS.new"
	mv "$RECORDS.new" "$RECORDS"
}
records 1 2 3
taskset -c "$CLIENT_CPU" "$TMP/bin/dnsserver" -addr "127.0.0.1:$DNSPORT" -records "$RECORDS" >"$TMP/dns.log" 2>&1 &
PIDS+=("$!")

peersblock() {
	printf '\t\tpeers srv %s {\n\t\t\trefresh 1s\n\t\t\tresolvers 127.0.0.1:%s\n\t\t\tgrace 5s\n\t\t}\n' "$SRV" "$DNSPORT"
}
nodecf() { # nodecf I
	local i=$1
	cat <<EOF
{
	admin 127.0.0.1:${ADMIN[$i]}
	persist_config off
	grace_period 1s
	shardcache {
		node n$i ${SAN_HOSTS[$((i - 1))]}:$SAN_PORT
$(peersblock)
		secret {env.SHARDCACHE_SECRET}
		lan 127.0.0.1:${HTTP[$i]}
	}
}

http://127.0.0.1:${HTTP[$i]} {
	bind 127.0.0.1
	header X-Node n$i
	shardcache {
		root $TMP/root$i
		group site
		memory 1GiB
		hot 64MiB
	}
}
EOF
}
directorcf() {
	cat <<EOF
{
	admin 127.0.0.1:${ADMIN[d]}
	persist_config off
	grace_period 1s
	shardcache {
		node director $DIRECTOR_SAN
$(peersblock)
		secret {env.SHARDCACHE_SECRET}
		observer
	}
}

http://127.0.0.1:${HTTP[d]} {
	bind 127.0.0.1
	reverse_proxy {
		dynamic shardcache
		lb_policy shardcache
		lb_try_duration 2s
		fail_duration 5s
	}
}
EOF
}
for i in 1 2 3 4; do nodecf "$i" >"$TMP/n$i.caddy"; done
directorcf >"$TMP/nd.caddy"

# --- status --------------------------------------------------------------------------------

grp() { status "$1" | jq -c '.groups[] | select(.group == "site")'; }
# settled WANT I...: node (or director, d) I lists the ring WANT (n1,n2,...),
# is ready, and sees every other member of WANT up, ready, on its ring.
settled() {
	local want=$1 i st
	shift
	for i in "$@"; do
		st=$(status "$i" 2>/dev/null) || return 1
		jq -e --arg w "$want" '($w | split(",")) as $want | .ready and ((.ring // []) | sort | join(",")) == $w
			and (.node as $me | [$want[] | select(. != $me)] | all(. as $n | any($root.members[]; .name == $n and .up and .ready and .same_ring)))' \
			--argjson root "$st" <<<"$st" >/dev/null || return 1
	done
}
moved() { grep -ac '"share moved to the new ring"' "$TMP/n$1.log" || true; } # moved I: lines so far
# waitfor SECS WHAT CMD...: run CMD every 0.1 s until it succeeds; exit after SECS.
waitfor() {
	local secs=$1 what=$2 t
	shift 2
	for t in $(seq 1 $((secs * 10))); do
		"$@" && return 0
		sleep 0.1
	done
	log "membership.sh: not $what after ${secs}s"
	for i in 1 2 3 4 d; do
		log "  n$i: $(status "$i" 2>/dev/null | jq -c '{ready, ring, members: [.members[] | {name, up, ready}]}' 2>/dev/null || echo down)"
	done
	exit 1
}
movedall() { # movedall I...: each nI logged one more "share moved" than MOVED0[I]
	local i
	for i in "$@"; do [ "$(moved "$i")" -gt "${MOVED0[$i]}" ] || return 1; done
}
declare -A MOVED0=()
movedlines() { # the last "share moved" line of n1-n3, shortened
	local i
	for i in 1 2 3; do
		grep -a '"share moved to the new ring"' "$TMP/n$i.log" | tail -n 1 |
			jq -c --arg n "n$i" '{node: $n, took: (.took * 10 | round / 10), items, from_peers_memory, storage_reads_meanwhile}'
	done
}
# (.items, "held now", reads 0 in this version of the status: the share-moved
# log lines give the count instead)
# counters I: "items primed_items primed_bytes handoff_items handoff_bytes storage_reads served_bytes"
counters() {
	grp "$1" 2>/dev/null | jq -r '[.items, .primed_items, .primed_bytes, (.handoff_items // 0), (.handoff_bytes // 0), .storage_reads, .served_bytes_to_peers] | join(" ")' ||
		echo "0 0 0 0 0 0 0"
}
# tiers: requests each tier answered, summed over n1-n4 (down: 0)
tiers() {
	local i
	for i in 1 2 3 4; do
		grp "$i" 2>/dev/null | jq -r '.tiers | [(.local.requests // 0), (.hot.requests // 0), (.peer.requests // 0), (.storage.requests // 0)] | join(" ")' || echo "0 0 0 0"
	done | awk '{l += $1; h += $2; p += $3; s += $4} END {print l, h, p, s}'
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
declare -A TIERS=() PHT=()
phase() { # phase NAME: the load counts requests in NAME from now on
	TIERS[$1]=$(tiers)
	PHT[$1]=$(now)
	PHASES+=("$1")
	echo "$1" >"$TMP/phase"
}
PHASES=()

# --- 0. three nodes and the director --------------------------------------------------------

log "load before: $LOAD_BEFORE"
log "starting n1-n3 and the director (CPU $SERVER_CPU)"
for i in 1 2 3; do startnode "$i" "$TMP/n$i.caddy"; done
caddy_start "$CADDY" "$TMP/nd.caddy" "${ADMIN[d]}" "$TMP/homed" "$TMP/nd.log" director
NPID[d]=$CADDY_PID
T0=$(now)
waitfor 120 "ready on n1,n2,n3" settled n1,n2,n3 1 2 3 d
log "n1-n3 primed and ready, the director sees them: $(secs "$T0" "$(now)") s"

echo start >"$TMP/phase"
taskset -c "$CLIENT_CPU" "$LOAD" -paths "$TMP/paths" -phase "$TMP/phase" -c "$CONNS" -rate "$RATE" \
	-target "director=http://127.0.0.1:${HTTP[d]}" -target "n1=http://127.0.0.1:${HTTP[1]}" \
	-target "n2=http://127.0.0.1:${HTTP[2]}" -target "n3=http://127.0.0.1:${HTTP[3]}" \
	>"$TMP/load.out" 2>"$TMP/load.err" &
LOADPID=$!
PIDS+=("$LOADPID")
sleep 2 # warm-up (counted as "start", not reported)
phase before
sleep "$HOLD"

# --- 1. n4 joins -------------------------------------------------------------------------------

declare -A C0=() C1=() C2=() C3=()
for i in 1 2 3; do C0[$i]=$(counters "$i"); MOVED0[$i]=$(moved "$i"); done
phase join
log "1. n4 joins: records added, n4 started"
records 1 2 3 4
: >"$TMP/n4.log"
startnode 4 "$TMP/n4.caddy"
J0=$CADDY_T0
waitfor 120 "ready on the ring of four" settled n1,n2,n3,n4 1 2 3 4 d
JREADY=$(secs "$J0" "$(now)")
waitfor 60 "share moved on n1-n3" movedall 1 2 3
JMOVED=$(secs "$J0" "$(now)")
log "   ring of four, all ready: ${JREADY}s after n4's start; n1-n3 settled: ${JMOVED}s"
N4J=$(counters 4)
JLINES=$(movedlines)
for i in 1 2 3; do C1[$i]=$(counters "$i"); done
N4PRIME=$(grep -a '"msg":"primed"' "$TMP/n4.log" | head -n 1 || true)
phase between
sleep "$HOLD"

# --- 2. n4 leaves ------------------------------------------------------------------------------

for i in 1 2 3; do C2[$i]=$(counters "$i"); MOVED0[$i]=$(moved "$i"); done
N4L0=$(counters 4)
phase leave
log "2. n4 leaves: records removed"
records 1 2 3
L0=$(now)
waitfor 120 "ready on the ring of three" settled n1,n2,n3 1 2 3 d
LREADY=$(secs "$L0" "$(now)")
waitfor 60 "share moved on n1-n3" movedall 1 2 3
LMOVED=$(secs "$L0" "$(now)")
N4L1=$(counters 4)
stopnode 4
log "   ring of three, all ready: ${LREADY}s after the records went; n1-n3 settled: ${LMOVED}s; n4 stopped"
for i in 1 2 3; do C3[$i]=$(counters "$i"); done
phase after
sleep "$HOLD"
TIERS[end]=$(tiers)
PHT[end]=$(now)
echo end >"$TMP/phase"
wait "$LOADPID" || true
for i in 1 2 3 d; do stopcaddy "${NPID[$i]}"; done
LOAD_AFTER=$(loadavg)
ELAPSED=$(($(date +%s) - START))

# --- 3. table ------------------------------------------------------------------------------------

f() { echo "$1" | cut -d' ' -f"$2"; } # f COUNTERS FIELD
sumd() { # sumd FROM TO FIELD: the field's delta summed over n1-n3
	local -n a=$1 b=$2
	local i s=0
	for i in 1 2 3; do s=$((s + $(f "${b[$i]}" "$3") - $(f "${a[$i]}" "$3"))); done
	echo "$s"
}
perd() { # perd FROM TO FIELD: the deltas of n1, n2, n3
	local -n a=$1 b=$2
	local i out=""
	for i in 1 2 3; do out+="${out:+ + }$(($(f "${b[$i]}" "$3") - $(f "${a[$i]}" "$3")))"; done
	echo "$out"
}
SH4=$(awk '$1 == 4 && $2 == "n4" {print $3, $4}' "$TMP/shares")
SH4N=${SH4% *} SH4B=${SH4#* }
n4pi=$(f "$N4J" 2) n4pb=$(f "$N4J" 3) n4hi=$(f "$N4J" 4) n4hb=$(f "$N4J" 5) n4sr=$(f "$N4J" 6)
{
	echo "shardcache membership bench $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
	echo "$(go version | cut -d' ' -f3), Caddy $("$CADDY" version | cut -d' ' -f1), CGO_ENABLED=0 ${BUILD[*]:1}; built from the $WHAT"
	echo "site: $NFILES files, $SITEB B ($(mib "$SITEB") MiB), $NBIG over 4 MiB (chunked); a copy per node (cp -a)"
	echo "nodes n1-n4 (SAN ${SAN_HOSTS[0]}-5:$SAN_PORT, peers srv refresh 1s, memory 1GiB) and a director, all on CPU $SERVER_CPU;"
	echo "load on CPU $CLIENT_CPU: Zipf s=1.1 over the files, $RATE req/s x $CONNS workers on each of director, n1, n2, n3"
	echo "load average before $LOAD_BEFORE, after $LOAD_AFTER; run took ${ELAPSED}s"
	echo
	echo "JOIN (n4 started, its records added)"
	echo "  ring of 4 on n1-n4 and the director, all ready:  ${JREADY} s after n4's start (n1-n3 share moved: ${JMOVED} s)"
	echo "  n4's share (ring of 4, computed):               $SH4N files, $SH4B B ($(mib "$SH4B") MiB; 1/4 of the site = $(mib $((SITEB / 4))) MiB)"
	echo "  n4 primed:                                      $n4pi files, $n4pb B ($(mib "$n4pb") MiB)"
	echo "  of which from the others' memory (handoff):     $n4hi files, $n4hb B ($(mib "$n4hb") MiB)"
	echo "  of which read from n4's storage:                $((n4pi - n4hi)) files, $((n4pb - n4hb)) B ($(mib $((n4pb - n4hb))) MiB)"
	echo "  n4 storage_reads (not priming) until ready:     $n4sr"
	echo "  n1-n3 served_bytes_to_peers over the join:      $(perd C0 C1 7) B"
	echo "  share-moved log lines (n1-n3; items: held after the change):"
	printf '%s\n' "$JLINES" | sed 's/^/    /'
	echo "  n1-n3 storage_reads over the join:              $(perd C0 C1 6)"
	echo "  n4 primed: $N4PRIME"
	echo
	echo "LEAVE (n4's records removed; n4 stopped once n1-n3 were ready without it)"
	echo "  ring of 3 on n1-n3 and the director, all ready:  ${LREADY} s after the records went (n1-n3 share moved: ${LMOVED} s)"
	echo "  n1-n3 handoff_items from n4's memory:           $(perd C2 C3 4) = $(sumd C2 C3 4) files"
	echo "  n1-n3 handoff_bytes from n4's memory:           $(perd C2 C3 5) = $(sumd C2 C3 5) B ($(mib "$(sumd C2 C3 5)") MiB)"
	echo "  n1-n3 storage_reads over the leave:             $(perd C2 C3 6) = $(sumd C2 C3 6)"
	echo "  n4 served_bytes_to_peers over the leave:        $(($(f "$N4L1" 7) - $(f "$N4L0" 7))) B"
	echo "  share-moved log lines (n1-n3; items: held after the change):"
	movedlines | sed 's/^/    /'
	echo
	echo "LOAD per phase (failed: transport error, status other than 200, or a body of another size)"
	printf '%-8s %7s | %9s %6s %9s | %9s %6s | %8s %8s %8s %8s\n' phase secs dir.req dir.fail owner% node.req n.fail local% hot% peer% storage%
	keys=("${PHASES[@]}" end)
	for k in $(seq 0 $((${#PHASES[@]} - 1))); do
		p=${PHASES[$k]} nx=${keys[$((k + 1))]}
		dur=$(secs "${PHT[$p]}" "${PHT[$nx]:-$(now)}")
		case $p in before | after) oc=5 ;; between) oc=6 ;; *) oc=7 ;; esac
		read -r dreq dfail downer < <(awk -v p="$p" -v oc="$oc" '$1 == p && $2 == "director" {print $3, $4, $(oc + 1)}' "$TMP/load.out")
		read -r nreq nfail < <(awk -v p="$p" '$1 == p && $2 != "director" {r += $3; f += $4} END {print r + 0, f + 0}' "$TMP/load.out")
		read -r t <<<"$(paste -d' ' <(echo "${TIERS[$nx]}") <(echo "${TIERS[$p]}") | awk '{l = $1 - $5; h = $2 - $6; q = $3 - $7; s = $4 - $8; n = l + h + q + s; if (!n) n = 1
			printf "%.1f %.1f %.1f %.1f", 100 * l / n, 100 * h / n, 100 * q / n, 100 * s / n}')"
		read -r tl th tp ts <<<"$t"
		ok=$((${dreq:-0} - ${dfail:-0}))
		printf '%-8s %7s | %9s %6s %8s%% | %9s %6s | %7s%% %7s%% %7s%% %7s%%\n' "$p" "$dur" "${dreq:-0}" "${dfail:-0}" \
			"$(awk -v a="${downer:-0}" -v b="$ok" 'BEGIN { printf "%.2f", b ? 100 * a / b : 0 }')" "$nreq" "$nfail" "$tl" "$th" "$tp" "$ts"
	done
	echo "  owner%: the director's successful requests answered (X-Node) by the path's owner: ring of 3 (before, after),"
	echo "  of 4 (between), of 3 or 4 (join, leave). local/hot/peer/storage: how the nodes answered, summed over n1-n4,"
	echo "  the director's requests and the direct ones on n1-n3 together (tier counters of /shardcache/status)."
	[ ! -s "$TMP/load.err" ] || { echo "load errors (first of each phase and target):"; sed 's/^/  /' "$TMP/load.err"; }
} | tee "$OUT/membership-$STAMP.txt"
