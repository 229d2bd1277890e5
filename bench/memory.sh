#!/usr/bin/env bash
# bench/memory.sh: the memory a primed store costs, against the bytes it
# holds: 100,000 small files (256 B-4 KiB) and 4 files of 192 MiB, plus an
# almost empty tree for Caddy's own baseline. Target: RSS <= 1.1 x held + 64 MiB.
# smallfit is the small tree again with a budget that fits it (memory 256MiB).
#
#   bench/memory.sh [-c cases] [-s secs] [-n] [-f]
set -euo pipefail

CASES=empty,small,smallfit,large # -c: which cases, in this order
SETTLE=2                # -s: seconds between the checks and the readings
FORCE=0                 # -f: run even when free memory or disk looks short
PROFILE=1               # -n: no heap profile of the small case
SMALL_N=100000
SMALL_DIRS=1000
LARGE_N=4
LARGE_SIZE=$((192 << 20))
# bench_setup wants these (it checks for 2 CPUs; Caddy runs on all of them
# here: priming is parallel and there is no client to compete with).
SERVER_CPU=1
CLIENT_CPU=0
CADDY_CPUS=0-$(($(nproc) - 1)) # startcaddy: Caddy on all CPUs

usage() {
	sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
	cat <<EOF
  -c cases    comma-separated, from empty, small, smallfit, large
              (default $CASES)
  -s secs     wait after the checks before reading memory (default $SETTLE)
  -n          skip the heap profile of the small case (a second start of
              Caddy on the same tree, with GODEBUG=memprofilerate=1)
  -f          run even if free memory or disk looks short
EOF
}

while getopts "c:s:nfh" opt; do
	case $opt in
	c) CASES=$OPTARG ;;
	s) SETTLE=$OPTARG ;;
	f) FORCE=1 ;;
	n) PROFILE=0 ;;
	h) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$BENCH/lib.sh" # REPO, OUT, STAMP and the helpers

# --- room ----------------------------------------------------------------------

# The large case holds 768 MiB in the server and as much again in the page
# cache (reclaimable); its tree takes 768 MiB of disk, the small one ~400 MiB.
avail_mib=$(free -m | awk '/^Mem:/ {print $7}')
disk_mib=$(df -Pm /tmp | awk 'NR == 2 {print $4}')
log "memory.sh: $avail_mib MiB of memory available (free -m), $disk_mib MiB of disk free in /tmp"
short=""
if [ "$avail_mib" -lt 1536 ]; then short+=" memory: $avail_mib MiB available, want 1536;"; fi
if [ "$disk_mib" -lt 1200 ]; then short+=" disk: $disk_mib MiB free in /tmp, want 1200;"; fi
if [ -n "$short" ]; then
	if [ "$FORCE" = 1 ]; then
		log "memory.sh: short of room (${short% ;}); running anyway (-f)"
	else
		log "memory.sh: short of room:${short%;}. Free some, use -c empty,small (needs ~600 MiB), or -f to run anyway."
		exit 1
	fi
fi

bench_setup memory.sh server shardmem go curl jq ss cmp taskset

# --- build ---------------------------------------------------------------------

mkdir -p "$TMP/bin"
log "building ours (./cmd/caddy): CGO_ENABLED=0 ${BUILD[*]}"
(cd "$REPO" && CGO_ENABLED=0 "${BUILD[@]}" -o "$TMP/bin/caddy" ./cmd/caddy)
(cd "$REPO" && go build -o "$TMP/bin/gensmall" ./bench/gensmall)
BIN=$TMP/bin/caddy

# --- readings ------------------------------------------------------------------

# procmib PID FIELD: a /proc/PID/status figure (kB) in MiB.
procmib() { awk -v f="$2:" '$1 == f {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

# heapstats ADMINPORT: the runtime's own figures (MiB; no GC forced), from
# the end of the text heap profile.
heapstats() {
	curl -s "http://127.0.0.1:$1/debug/pprof/heap?debug=1" | awk '
		/^# (HeapAlloc|HeapInuse|HeapIdle|HeapReleased|Sys|NumGC|StackInuse|MSpanInuse) = / {
			v = $4; if ($2 != "NumGC") v = sprintf("%.1f", v / 1048576); printf "%s %s ", $2, v
		}'
}

# --- cases ---------------------------------------------------------------------

declare -A GOLIMIT ITEMS HELD RSS HWM ANON FILE GCRSS HEAP ROUND PRIMED NOTE SERVED
ORDER=()
HEAP_PROF=""

runcase() {
	local c=$1 tree=$TMP/tree-$1 gen admin port line pid f rel i st mem=2GiB
	case $c in
	empty) gen=(-n 1 -dirs 1 -min 1024 -max 1024) ;;
	small) gen=(-n "$SMALL_N" -dirs "$SMALL_DIRS" -min 256 -max 4096) ;;
	smallfit) gen=(-n "$SMALL_N" -dirs "$SMALL_DIRS" -min 256 -max 4096) mem=256MiB ;;
	large) gen=(-n "$LARGE_N" -dirs 1 -min "$LARGE_SIZE" -max "$LARGE_SIZE") ;;
	*) log "memory.sh: unknown case $c"; exit 2 ;;
	esac
	log "== $c: writing the tree (gensmall ${gen[*]})"
	gen=$("$TMP/bin/gensmall" -dir "$tree" "${gen[@]}")
	ROUND[$c]=$(jq -r '.rounded' <<<"$gen")
	sync # keep writeback out of the priming time
	freeport admin
	freeport port
	cat >"$TMP/$c.caddy" <<EOF
{
	admin 127.0.0.1:$admin
	persist_config off
	skip_install_trust
	servers {
		protocols h1
	}
}
http://127.0.0.1:$port {
	shardcache {
		root $tree
		memory $mem
	}
}
EOF
	startcaddy "$c" "$BIN" "$TMP/$c.caddy" "$admin"
	pid=$CADDY_PID
	if ! line=$(waitprimed "$CADDY_LOG" 180); then
		log "memory.sh: $c: no \"primed\" log line within 180 s; its log:"
		tail -n 20 "$CADDY_LOG" >&2
		exit 1
	fi
	log "  store: $line"
	PRIMED[$c]=$line
	ITEMS[$c]=$(jq -r '.items' <<<"$line")
	HELD[$c]=$(jq -r '.resident_bytes' <<<"$line")

	# A few files, byte for byte: the first, the last, and three between.
	mapfile -t files < <(cd "$tree" && find . -type f -name '*.bin' | sort | awk -v n="$(find . -type f | wc -l)" '
		NR == 1 || NR == n || NR == int(n / 4) + 1 || NR == int(n / 2) + 1 || NR == int(3 * n / 4) + 1')
	for f in "${files[@]}"; do
		rel=${f#./}
		st=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/$rel")
		if [ "$st" != 200 ]; then
			log "memory.sh: $c: /$rel: status $st, want 200"
			exit 1
		fi
		if ! curl -sf "http://127.0.0.1:$port/$rel" | cmp -s - "$tree/$rel"; then
			log "memory.sh: $c: /$rel: body differs from the file"
			exit 1
		fi
	done
	log "  checked ${#files[@]} files: status 200, same bytes"

	sleep "$SETTLE"
	RSS[$c]=$(procmib "$pid" VmRSS)
	HWM[$c]=$(procmib "$pid" VmHWM)
	ANON[$c]=$(procmib "$pid" RssAnon)
	FILE[$c]=$(procmib "$pid" RssFile)
	HEAP[$c]=$(heapstats "$admin")
	# The soft limit the app gives the Go runtime (memlimit.go): the one
	# for priming, then the one that follows the bytes held once primed.
	GOLIMIT[$c]=$(grep -a '"msg"' "$CADDY_LOG" | jq -rR 'fromjson? | select(.msg | startswith("set the Go memory limit") or startswith("primed: the Go memory limit")) | .limit' | awk '{printf "%s%.1f MiB", (NR > 1 ? " then " : ""), $1 / 1048576}' | tr -d '\n')
	st=$(curl -s "http://127.0.0.1:$admin/shardcache/status")
	local sitems sbytes
	sitems=$(jq -r '.groups[0].primed_items' <<<"$st")
	sbytes=$(jq -r '.groups[0].primed_bytes' <<<"$st")
	if [ "$sitems" != "${ITEMS[$c]}" ]; then
		NOTE[$c]="status says $sitems items primed, the log line ${ITEMS[$c]}"
	fi
	log "  RSS ${RSS[$c]} MiB (anon ${ANON[$c]}, file ${FILE[$c]}), peak ${HWM[$c]} MiB; held ${HELD[$c]} B; status: $sitems items, $sbytes B primed; ${HEAP[$c]}"
	# What a full GC gives back by itself (the floating garbage of priming;
	# freed pages go back to the OS only as the scavenger gets to them).
	curl -s -o /dev/null "http://127.0.0.1:$admin/debug/pprof/heap?gc=1"
	sleep 1
	GCRSS[$c]=$(procmib "$pid" VmRSS)

	if [ "$c" = small ] || [ "$c" = smallfit ]; then
		# Steady state of a warm site: every item served once, which makes
		# the handler keep its response header values (Item.Memo) for each.
		local t0 n
		t0=$(date +%s.%N)
		(cd "$tree" && find . -type f -name '*.bin' | sed "s|^\./|url = \"http://127.0.0.1:$port/|; s|\$|\"\noutput = /dev/null|") >"$TMP/urls.curl"
		n=$(curl -s -K "$TMP/urls.curl" -w '%{http_code}\n' | grep -c '^200$' || true)
		sleep "$SETTLE"
		SERVED[$c]="after serving every item once ($n of ${ITEMS[$c]} answered 200, $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}') s): RSS $(procmib "$pid" VmRSS) MiB, peak $(procmib "$pid" VmHWM) MiB; heap (MiB) $(heapstats "$admin")"
		curl -s -o /dev/null "http://127.0.0.1:$admin/debug/pprof/heap?gc=1"
		sleep 1
		SERVED[$c]+="; RSS 1 s after a forced GC $(procmib "$pid" VmRSS) MiB, HeapAlloc $(heapstats "$admin" | awk '{for (i = 1; i < NF; i++) if ($i == "HeapAlloc") print $(i + 1)}') MiB"
		log "  ${SERVED[$c]}"
	fi
	stopcaddy "$pid"

	if [ "$c" = small ] && [ "$PROFILE" = 1 ]; then
		# The heap profile from a second start on the same tree, recording
		# every allocation (GODEBUG=memprofilerate=1): exact bytes and counts
		# per allocation site, where the default rate (one sample per 512 KiB)
		# only estimates the many small objects. Its buckets live outside the
		# heap, so the readings above come from the run without it.
		log "  heap profile: starting again with GODEBUG=memprofilerate=1"
		CADDY_ENV=GODEBUG=memprofilerate=1 startcaddy "$c-prof" "$BIN" "$TMP/$c.caddy" "$admin"
		pid=$CADDY_PID
		if ! line=$(waitprimed "$CADDY_LOG" 180); then
			log "memory.sh: $c (profiled): no \"primed\" log line within 180 s"
			exit 1
		fi
		sleep "$SETTLE"
		HEAP_PROF=$OUT/memory-heap-small-$STAMP.pprof
		curl -s -o "$HEAP_PROF" "http://127.0.0.1:$admin/debug/pprof/heap?gc=1"
		log "  heap profile: $HEAP_PROF (that run's RSS: $(procmib "$pid" VmRSS) MiB)"
		stopcaddy "$pid"
	fi
	rm -rf "$tree"
	ORDER+=("$c")
}

IFS=, read -ra want <<<"$CASES"
for c in "${want[@]}"; do
	runcase "$c"
done

# --- table -----------------------------------------------------------------------

mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
{
	echo "shardcache memory bench $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) CPUs, $(free -m | awk '/^Mem:/ {print $2}') MiB RAM"
	echo "$(go version | cut -d' ' -f3), Caddy $("$BIN" version | cut -d' ' -f1), CGO_ENABLED=0 ${BUILD[*]:1}; tree $(git -C "$REPO" describe --always --dirty)"
	echo "shardcache { memory 2GiB } (smallfit: 256MiB) on all CPUs; readings ${SETTLE}s after priming and 5 checked GETs; target RSS <= 1.1 x held + 64 MiB"
	echo
	printf '%-8s | %7s | %9s | %8s | %8s | %8s | %9s | %8s | %8s | %s\n' \
		case items "held MiB" "RSS MiB" "peak MiB" RSS/held "ovh MiB" "B/item" "B/item-0" target
	printf -- '-%.0s' $(seq 1 110); echo
	base=${RSS[empty]:-}
	for c in "${ORDER[@]}"; do
		held=$(mib "${HELD[$c]}")
		awk -v c="$c" -v n="${ITEMS[$c]}" -v h="$held" -v r="${RSS[$c]}" -v p="${HWM[$c]}" -v b="$base" '
			BEGIN {
				ovh = r - h
				ratio = (h > 0) ? sprintf("%.2f", r / h) : "-"
				per = (n > 0 && c != "empty") ? sprintf("%.0f", ovh * 1048576 / n) : "-"
				net = (n > 0 && b != "" && c != "empty") ? sprintf("%.0f", (ovh - b) * 1048576 / n) : "-"
				lim = 1.1 * h + 64
				verdict = sprintf("%s (<= %.0f MiB)", (r <= lim) ? "met" : "MISSED", lim)
				printf "%-8s | %7d | %9.1f | %8.1f | %8.1f | %8s | %9.1f | %8s | %8s | %s\n",
					c, n, h, r, p, ratio, ovh, per, net, verdict
			}'
	done
	echo
	echo "held: the primed line's resident_bytes (body bytes); ovh = RSS - held; B/item = ovh / items;"
	echo "B/item-0 = (ovh - the empty case's RSS) / items: what each item costs beyond Caddy's own baseline."
	for c in "${ORDER[@]}"; do
		echo "$c: Go memory limit ${GOLIMIT[$c]:-none logged}; RSS anon ${ANON[$c]} + file ${FILE[$c]} MiB; ${GCRSS[$c]} MiB 1 s after a forced GC; heap (MiB) ${HEAP[$c]}; bodies as heap objects (size-class rounded) $(mib "${ROUND[$c]}") MiB"
		echo "$c: store: $(jq -c '{items, bytes, duration, resident_bytes}' <<<"${PRIMED[$c]}")${NOTE[$c]:+; !! ${NOTE[$c]}}"
		if [ -n "${SERVED[$c]:-}" ]; then echo "$c: ${SERVED[$c]}"; fi
	done
	if [ -n "$HEAP_PROF" ]; then
		echo
		echo "heap profile of the small case (memprofilerate=1, after a forced GC): $HEAP_PROF"
		echo "go tool pprof -top -sample_index=inuse_space -nodecount=15:"
		go tool pprof -top -sample_index=inuse_space -nodecount=15 "$HEAP_PROF" 2>&1 | sed -n '/^Showing\|^ *flat/,$p'
		# By line, bytes and object counts: kept beside the profile.
		{
			go tool pprof -top -lines -sample_index=inuse_space -nodecount=40 "$HEAP_PROF"
			echo
			go tool pprof -top -lines -sample_index=inuse_objects -nodecount=40 "$HEAP_PROF"
		} >"${HEAP_PROF%.pprof}.lines.txt" 2>&1 || true
		echo "(by source line, bytes and objects: ${HEAP_PROF%.pprof}.lines.txt)"
	fi
} | tee "$OUT/memory-$STAMP.txt"
