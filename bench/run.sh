#!/usr/bin/env bash
# bench/run.sh: shardcache against Caddy's respond and file_server, over
# HTTP and HTTPS, for 1 KiB, 64 KiB and 1 MiB bodies; then the priming rate
# of a 1 GiB tree. See bench/README.md.
#
#   bench/run.sh [-d secs] [-w secs] [-c conns] [-r repeats] [-p] [-s] [-P] [-G size] [-O] [-H size]
set -euo pipefail

DUR=5          # seconds measured per cell
WARM=1         # seconds of warm-up before each cell
CONNS=32       # wrk connections (one wrk thread)
REPEATS=1      # measure every cell this many times, report the median
PROFILE=0      # -p: CPU profile of the server during an extra 1 KiB run
PLUMBING=0     # -s: stock Caddy only, no shardcache column (to test the script)
PRIME=1        # -P: skip the priming measurement
PRIME_SIZE=1GiB
OTHERS=1       # -O: skip the nginx and Varnish columns
HEAP_SIZE=4GiB # -H: size of the heap/GC line's tree (0: skip it)
SERVER_CPU=1
CLIENT_CPU=0

usage() {
	sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
	cat <<EOF
  -d secs     measured duration of each wrk run (default $DUR)
  -w secs     warm-up before each run (default $WARM)
  -c conns    wrk connections (default $CONNS)
  -r n        repeat every measurement n times and report the median (default 1)
  -p          also profile the server (CPU, via the admin endpoint) during
              extra runs of shardcache and of respond (1 KiB over HTTP,
              64 KiB over HTTPS); profiles and top lists go to bench/out/
  -s          plumbing test: stock Caddy only, shardcache not built
  -P          skip the priming measurement
  -G size     size of the priming tree (default $PRIME_SIZE; e.g. 256MiB)
  -O          skip the nginx and Varnish columns (plain HTTP)
  -H size     size of the tree of the heap/GC line (default $HEAP_SIZE; 0 skips it)
EOF
}

while getopts "d:w:c:r:psPG:OH:h" opt; do
	case $opt in
	d) DUR=$OPTARG ;;
	w) WARM=$OPTARG ;;
	c) CONNS=$OPTARG ;;
	r) REPEATS=$OPTARG ;;
	p) PROFILE=1 ;;
	s) PLUMBING=1 ;;
	P) PRIME=0 ;;
	G) PRIME_SIZE=$OPTARG ;;
	O) OTHERS=0 ;;
	H) HEAP_SIZE=$OPTARG ;;
	h) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$BENCH/lib.sh" # REPO, OUT, STAMP and the helpers

bench_setup run.sh server shardbench go wrk taskset curl jq sha256sum ss

# --- build -----------------------------------------------------------------

mkdir -p "$TMP/bin"
log "building stock Caddy (bench/stockcaddy) and ours (./cmd/caddy): CGO_ENABLED=0 ${BUILD[*]}"
(cd "$REPO" && CGO_ENABLED=0 "${BUILD[@]}" -o "$TMP/bin/caddy-stock" ./bench/stockcaddy)
if [ "$PLUMBING" = 1 ]; then
	cp "$TMP/bin/caddy-stock" "$TMP/bin/caddy-ours"
else
	if ! (cd "$REPO" && CGO_ENABLED=0 "${BUILD[@]}" -o "$TMP/bin/caddy-ours" ./cmd/caddy); then
		log "run.sh: ./cmd/caddy does not build (use -s to test the script with stock Caddy only)"
		exit 1
	fi
fi
(cd "$REPO" && go build -o "$TMP/bin/gentree" ./bench/gentree)
STOCK=$TMP/bin/caddy-stock
OURS=$TMP/bin/caddy-ours

# --- trees -----------------------------------------------------------------

TREE=$TMP/tree
"$TMP/bin/gentree" -bench "$TREE"
SIZES=(1k 64k 1m)
declare -A BYTES=([1k]=1024 [64k]=65536 [1m]=1048576)
declare -A LABEL=([1k]="1 KiB" [64k]="64 KiB" [1m]="1 MiB")
declare -A SUM=()
for s in "${SIZES[@]}"; do
	SUM[$s]=$(sha256sum <"$TREE/b/$s.txt" | cut -d' ' -f1)
done
NFILES=$(find "$TREE" -type f | wc -l)

# --- Caddy -----------------------------------------------------------------

# globals PORT: <global options> with admin on $1.
globals() {
	cat <<EOF
{
	admin 127.0.0.1:$1
	persist_config off
	skip_install_trust
	auto_https disable_redirects
	servers {
		protocols h1 h2
	}
}
EOF
}

# body snippet for respond: each size inlined as a heredoc, with an explicit
# Content-Length (net/http would chunk the larger bodies otherwise).
{
	echo "(bodies) {"
	respond_bodies "${SIZES[@]}"
	echo "}"
} >"$TMP/bodies.caddy"

declare -A PORT=()
freeport A_OURS
freeport A_STOCK
freeport A_PRIME
for srv in respond file_server shardcache stock; do
	for proto in http https; do
		freeport "P_${srv}_$proto"
		v="P_${srv}_$proto"
		PORT[$srv/$proto]=${!v}
	done
done
freeport P_PRIME

site() { # site PROTO PORT: opening line of a site block
	if [ "$1" = https ]; then
		printf 'https://127.0.0.1:%s {\n\ttls internal\n' "$2"
	else
		printf 'http://127.0.0.1:%s {\n' "$2"
	fi
}

{
	globals "$A_OURS"
	cat "$TMP/bodies.caddy"
	for proto in http https; do
		site "$proto" "${PORT[respond/$proto]}"
		printf '\timport bodies\n}\n'
		site "$proto" "${PORT[file_server/$proto]}"
		printf '\troot * %s\n\tfile_server\n}\n' "$TREE"
		if [ "$PLUMBING" = 0 ]; then
			site "$proto" "${PORT[shardcache/$proto]}"
			printf '\tshardcache {\n\t\troot %s\n\t\tmemory 256MiB\n\t}\n}\n' "$TREE"
		fi
	done
} >"$TMP/ours.caddy"

{
	globals "$A_STOCK"
	for proto in http https; do
		site "$proto" "${PORT[stock/$proto]}"
		printf '\troot * %s\n\tfile_server\n}\n' "$TREE"
	done
} >"$TMP/stock.caddy"

url() { # url SERVER PROTO SIZE
	echo "$2://127.0.0.1:${PORT[$1/$2]}/b/$3.txt"
}

# check SERVER PROTO SIZE: the server must send exactly the file's bytes,
# with status 200 and a Content-Length.
check() {
	local u hdr body code cl sum
	u=$(url "$@")
	hdr=$TMP/check.hdr
	body=$TMP/check.body
	code=$(curl -sk --http1.1 -D "$hdr" -o "$body" -w '%{http_code}' "$u" || echo 000)
	cl=$(tr -d '\r' <"$hdr" | awk -F': ' 'tolower($1)=="content-length"{print $2}')
	sum=$(sha256sum <"$body" | cut -d' ' -f1)
	if [ "$code" != 200 ] || [ "$cl" != "${BYTES[$3]}" ] || [ "$sum" != "${SUM[$3]}" ]; then
		log "run.sh: $u: status $code, Content-Length '${cl}', body $(stat -c %s "$body") bytes, sha256 ${sum:0:12} (want 200, ${BYTES[$3]}, ${SUM[$3]:0:12})"
		return 1
	fi
}

# --- measuring ---------------------------------------------------------------

declare -A RPS=() MBS=() NOTE=()

# Other work on the machine (a build, a test suite) skews a measurement
# badly on 2 CPUs. Every run checks how much CPU went to anything but the
# servers and wrk: /proc/stat's user+nice+system time, less the Caddy
# processes' and wrk's own. A run where that exceeds QUIET_PCT of one CPU is
# redone (up to QUIET_TRIES times); every try first waits (up to QUIET_WAIT
# s) for a moment when the machine is idle. A cell reports the median of
# its quiet runs (one per repeat, -r); if no try of it was quiet, the median
# of the noisy ones, and the table marks the cell with "~".
QUIET_PCT=${QUIET_PCT:-10}
QUIET_TRIES=${QUIET_TRIES:-6}
declare -A NOISY=()

QUIET_WAIT=${QUIET_WAIT:-60}

# measure SERVER PROTO SIZE: warm up, run wrk, record its req/s.
measure() {
	local srv=$1 proto=$2 size=$3 u res rps mbs errs key try s0 s1 c0 c1 wt wall foreign quiet=0
	key=$srv/$proto/$size
	u=$(url "$srv" "$proto" "$size")
	for try in $(seq 1 "$QUIET_TRIES"); do
		waitquiet
		taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${WARM}s" "$u" >/dev/null
		s0=$(sys_ticks)
		c0=$(proc_ticks "${SERVER_PIDS[@]}")
		{ TIMEFORMAT='%3U %3S %3R'; time taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$u" >"$TMP/wrk.out" 2>&1; } 2>"$TMP/wrk.time"
		s1=$(sys_ticks)
		c1=$(proc_ticks "${SERVER_PIDS[@]}")
		res=$(cat "$TMP/wrk.out")
		wt=$(awk '{print $1 + $2}' "$TMP/wrk.time")
		wall=$(awk '{print $3}' "$TMP/wrk.time")
		foreign=$(foreign_pct "$s0" "$s1" "$c0" "$c1" "$wt" "$wall")
		printf '== %s %s (try %d, other CPU use %s%%)\n%s\n' "$key" "$u" "$try" "$foreign" "$res" >>"$OUT/wrk-$STAMP.txt"
		rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$res")
		mbs=$(tomib "$(awk '/^Transfer\/sec:/ {print $2}' <<<"$res")")
		errs=$(awk '/Non-2xx or 3xx responses:/ {print "non-2xx " $NF} /Socket errors:/ {print}' <<<"$res" | paste -sd' ')
		if [ -n "$errs" ]; then NOTE[$key]="$errs"; fi
		# The median of the quiet runs; of the noisy ones only while no try of
		# this cell (in this or an earlier repeat) has been quiet.
		if keepmedian "$key" "$rps" "$mbs" "$foreign"; then quiet=1; fi
		log "  $(printf '%-26s %10.0f req/s %9s MiB/s  (other CPU use %3s%%)' "$key" "$rps" "$mbs" "$foreign")${errs:+  !! $errs}"
		[ "$quiet" = 0 ] || break
	done
}

# --- nginx and Varnish ---------------------------------------------------------
# What one would otherwise put in front of a tree to serve it from RAM:
# nginx (sendfile from the page cache) and Varnish (hits from malloc
# storage, Caddy's file_server behind it). Each runs alone on the server
# CPU, plain HTTP, its config in TMP; the distribution's packages
# (nginx-light, varnish) are installed if missing.

# others_install: install nginx and varnishd if missing; fails when that
# does not work.
others_install() {
	local missing=()
	command -v nginx >/dev/null || missing+=(nginx-light)
	command -v varnishd >/dev/null || missing+=(varnish)
	[ "${#missing[@]}" -gt 0 ] || return 0
	log "installing ${missing[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$TMP/apt.log" 2>&1; then
		log "run.sh: could not install ${missing[*]} (see apt-get); no nginx/Varnish columns"
		tail -n 5 "$TMP/apt.log" >&2
		return 1
	fi
}

# waitport PORT PID: wait (10 s at most) until something answers HTTP on
# PORT while PID lives.
waitport() {
	local i
	for i in $(seq 1 200); do
		curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

# withchildren PID: PID and its children (for the CPU accounting).
withchildren() { echo "$1" $(pgrep -P "$1" || true); }

measure_others() {
	others_install || return 0
	local d pid bpid s r
	freeport P_NGINX
	freeport P_VARNISH
	freeport P_VBACK
	freeport A_VBACK
	PORT[nginx/http]=$P_NGINX
	PORT[varnish/http]=$P_VARNISH

	# nginx: one worker, sendfile, open_file_cache.
	d=$TMP/nginx
	mkdir -p "$d/tmp"
	cat >"$d/nginx.conf" <<NGINX
worker_processes 1;
user root;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
	include /etc/nginx/mime.types;
	access_log off;
	sendfile on;
	tcp_nopush on;
	open_file_cache max=10000 inactive=60s;
	open_file_cache_valid 60s;
	client_body_temp_path $d/tmp;
	proxy_temp_path $d/tmp;
	server {
		listen 127.0.0.1:$P_NGINX;
		root $TREE;
	}
}
NGINX
	taskset -c "$SERVER_CPU" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;' >"$d/out.log" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	if ! waitport "$P_NGINX" "$pid"; then
		log "run.sh: nginx did not start:"
		cat "$d/out.log" "$d/error.log" >&2
		return 0
	fi
	read -ra SERVER_PIDS <<<"$(withchildren "$pid")"
	for s in "${SIZES[@]}"; do check nginx http "$s"; done
	log "measuring nginx (worker_processes 1, sendfile on, open_file_cache)"
	for r in $(seq 1 "$REPEATS"); do
		for s in "${SIZES[@]}"; do measure nginx http "$s"; done
	done
	stopcaddy "$pid"

	# Varnish: malloc storage, stock Caddy's file_server behind it, warmed.
	d=$TMP/varnish
	mkdir -p "$d"
	{
		globals "$A_VBACK"
		printf 'http://127.0.0.1:%s {\n\troot * %s\n\tfile_server\n}\n' "$P_VBACK" "$TREE"
	} >"$TMP/vback.caddy"
	startcaddy vback "$STOCK" "$TMP/vback.caddy" "$A_VBACK"
	bpid=$CADDY_PID
	taskset -c "$SERVER_CPU" varnishd -F -j none -n "$d" -a "127.0.0.1:$P_VARNISH" -b "127.0.0.1:$P_VBACK" \
		-s malloc,512m -t 86400 -p thread_pools=1 >"$d/out.log" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	if ! waitport "$P_VARNISH" "$pid"; then
		log "run.sh: varnishd did not start:"
		cat "$d/out.log" >&2
		stopcaddy "$bpid"
		return 0
	fi
	for s in "${SIZES[@]}"; do
		curl -s -o /dev/null "$(url varnish http "$s")" # warm: the first is a miss
		check varnish http "$s"
	done
	read -ra SERVER_PIDS <<<"$(withchildren "$pid") $bpid"
	log "measuring Varnish (-s malloc, file_server behind it, warmed)"
	for r in $(seq 1 "$REPEATS"); do
		for s in "${SIZES[@]}"; do measure varnish http "$s"; done
	done
	stopcaddy "$pid"
	stopcaddy "$bpid"
}

# others_table: the plain-HTTP rows of file_server, shardcache, nginx and
# Varnish, with shardcache's ratios to them and to respond; then the
# heap/GC line.
others_table() {
	local s f c n v
	echo
	echo "plain HTTP, each server alone on CPU $SERVER_CPU (req/s):"
	printf '%-7s | %9s %9s %9s %9s | %8s %8s %8s\n' size file_srv shardcch nginx varnish "s/nginx" "s/varn" "s/resp"
	printf -- '-%.0s' $(seq 1 84)
	echo
	for s in "${SIZES[@]}"; do
		f=${RPS[file_server/http/$s]:-} c=${RPS[shardcache/http/$s]:-}
		n=${RPS[nginx/http/$s]:-} v=${RPS[varnish/http/$s]:-}
		printf '%-7s | %9s %9s %9s %9s | %8s %8s %8s\n' "${LABEL[$s]}" \
			"$(cell "file_server/http/$s")" "$(cell "shardcache/http/$s")" "$(cell "nginx/http/$s")" "$(cell "varnish/http/$s")" \
			"$(ratio "$c" "$n")" "$(ratio "$c" "$v")" "$(ratio "$c" "${RPS[respond/http/$s]:-}")"
	done
	if [ -n "$HEAP_LINE" ]; then
		echo
		echo "$HEAP_LINE"
	fi
}

# --- heap/GC line ---------------------------------------------------------------
# The Go heap and a forced GC with a HEAP_SIZE tree primed: shard's
# BenchmarkPrimedHeap (runtime/metrics /memory/classes/heap/objects:bytes
# after a GC, the median of 5 forced GCs, RSS, bytes held).

HEAP_LINE=""
heap_gc() {
	local total ht out
	total=$(numfmt --from=iec-i "${HEAP_SIZE%B}")
	ht=$TMP/heaptree
	log "heap/GC: writing a $HEAP_SIZE tree"
	"$TMP/bin/gentree" -prime "$ht" -total "$total" >/dev/null
	find "$ht" -type f -print0 | xargs -0 cat >/dev/null
	waitquiet
	out=$(cd "$REPO" && SHARDCACHE_HEAP_TREE=$ht SHARDCACHE_HEAP_BYTES=$total CGO_ENABLED=0 \
		go test -trimpath -tags nobadger,nomysql,nopgx -run '^$' -bench '^BenchmarkPrimedHeap$' -benchtime 1x ./shard/ 2>&1 |
		grep '^heapgc:' | tail -n 1 || true)
	rm -rf "$ht"
	if [ -z "$out" ]; then
		HEAP_LINE="heap/GC: no result (shard BenchmarkPrimedHeap)"
		return
	fi
	HEAP_LINE=$(awk -v sz="$HEAP_SIZE" '{
		for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
		printf "heap/GC, %s tree primed (%d files): held %.2f GiB, Go heap objects %.1f MiB, forced GC %.2f ms, RSS %.2f GiB (%.3f x held)",
			sz, v["items"], v["held"] / 2^30, v["heap_objects"] / 2^20, v["gc_ms"], v["rss"] / 2^30, (v["held"] > 0 ? v["rss"] / v["held"] : 0)
	}' <<<"$out")
	log "  $HEAP_LINE"
}

PROTOS=(http https)

log "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1); server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU"
log "tree: $NFILES files; wrk -t1 -c$CONNS -d${DUR}s after ${WARM}s warm-up, median of $REPEATS"

SERVERS=(respond file_server)
[ "$PLUMBING" = 1 ] || SERVERS+=(shardcache)
SERVERS+=(stock)

# Both processes run side by side on the server CPU (the idle one costs
# nothing), so that stock Caddy's file_server is measured interleaved with
# the others, under the same conditions.
log "measuring (stock = stock Caddy's file_server): ${SERVERS[*]}"
startcaddy stock "$STOCK" "$TMP/stock.caddy" "$A_STOCK"
STOCK_PID=$CADDY_PID
startcaddy ours "$OURS" "$TMP/ours.caddy" "$A_OURS"
OURS_PID=$CADDY_PID
OURS_LOG=$CADDY_LOG
SERVER_PIDS=("$STOCK_PID" "$OURS_PID")
if [ "$PLUMBING" = 0 ]; then
	if line=$(waitprimed "$OURS_LOG" 60); then
		log "  store: $line"
	else
		log "  run.sh: no \"primed\" log line after 60 s; measuring anyway"
	fi
fi
for proto in "${PROTOS[@]}"; do
	for srv in "${SERVERS[@]}"; do
		for s in "${SIZES[@]}"; do
			# the internal CA's certificates may take a moment
			for i in $(seq 1 50); do check "$srv" "$proto" "$s" 2>/dev/null && break; sleep 0.1; done
			check "$srv" "$proto" "$s"
		done
	done
done
for r in $(seq 1 "$REPEATS"); do
	for proto in "${PROTOS[@]}"; do
		for s in "${SIZES[@]}"; do
			for srv in "${SERVERS[@]}"; do
				measure "$srv" "$proto" "$s"
			done
		done
	done
done
stopcaddy "$STOCK_PID"

if [ "$PROFILE" = 1 ]; then
	# The cells the targets are hardest for: 1 KiB over HTTP (per-request
	# overhead) and 64 KiB over HTTPS (TLS). Top lists both flat and
	# cumulative.
	for cellp in http/1k https/64k; do
		for srv in "${SERVERS[@]}"; do
			case $srv in file_server | stock) continue ;; esac
			proto=${cellp%/*} s=${cellp#*/}
			base=$OUT/cpu-$srv-$proto-$s-$STAMP
			secs=$((DUR > 2 ? DUR - 1 : 1))
			waitquiet
			curl -s -o "$base.pprof" "http://127.0.0.1:$A_OURS/debug/pprof/profile?seconds=$secs" &
			cpid=$!
			PIDS+=("$cpid")
			sleep 0.2
			taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" "$(url "$srv" "$proto" "$s")" >/dev/null
			wait "$cpid" || true
			{
				go tool pprof -top -nodecount=40 "$OURS" "$base.pprof"
				echo
				go tool pprof -top -cum -nodecount=60 "$OURS" "$base.pprof"
			} >"$base.top" 2>&1 || true
			log "profile of $srv at ${LABEL[$s]} over $proto: $base.pprof (top lists: $base.top)"
		done
	done
fi
stopcaddy "$OURS_PID"

[ "$OTHERS" = 0 ] || [ "$PLUMBING" = 1 ] || measure_others

# --- priming -------------------------------------------------------------------

PRIME_LINE="priming: skipped"
if [ "$PRIME" = 1 ] && [ "$PLUMBING" = 0 ]; then
	ptotal=$(numfmt --from=iec-i "${PRIME_SIZE%B}")
	log "priming: writing a $PRIME_SIZE tree"
	PT=$TMP/prime
	"$TMP/bin/gentree" -prime "$PT" -total "$ptotal" >"$TMP/prime.gen"
	find "$PT" -type f -print0 | xargs -0 cat >/dev/null # warm the page cache
	{
		globals "$A_PRIME"
		printf 'http://127.0.0.1:%s {\n\tshardcache {\n\t\troot %s\n\t\tmemory 2GiB\n\t}\n}\n' "$P_PRIME" "$PT"
	} >"$TMP/prime.caddy"
	# Priming is parallel work with no client to compete with: all CPUs.
	waitquiet
	CADDY_CPUS=0-$(($(nproc) - 1)) startcaddy prime "$OURS" "$TMP/prime.caddy" "$A_PRIME"
	if line=$(waitprimed "$CADDY_LOG" 120); then
		t_ready=$(jq -r '.ts' <<<"$line")
		rss=$(awk '/^VmRSS:/ {printf "%.0f", $2/1024}' "/proc/$CADDY_PID/status")
		log "  store: $line"
		# The store's line (shard/prime.go): items, bytes, duration (s),
		# mb_per_s (10^6 B/s), resident_bytes, memory.
		PRIME_LINE=$(jq -r --argjson t0 "$CADDY_T0" --arg rss "$rss" '
			def r($x; $n): ($x * $n | round) / $n;
			"priming: \(.items) files, \(r(.bytes / 1073741824; 100)) GiB in \(r(.duration; 1000)) s"
			+ " = \(.mb_per_s | floor) MB/s, \(.items / .duration | floor) items/s (store); \(r(.resident_bytes / 1073741824; 100)) GiB resident;"
			+ " ready \(r(.ts - $t0; 1000)) s after exec; server RSS \($rss) MiB"
		' <<<"$line")
	else
		PRIME_LINE="priming: no \"primed\" log line within 120 s"
		tail -n 5 "$CADDY_LOG" >&2
	fi
	stopcaddy "$CADDY_PID"
	rm -rf "$PT"
fi

[ "$HEAP_SIZE" = 0 ] || [ "$PLUMBING" = 1 ] || heap_gc

# --- table -----------------------------------------------------------------------

ratio() { # ratio A B
	if [ -z "$1" ] || [ -z "$2" ]; then echo "-"; return; fi
	awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
}
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "-" && a + 0 >= b) }'; }

{
	echo "shardcache bench $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
	echo "$(go version | cut -d' ' -f3), Caddy $("$OURS" version | cut -d' ' -f1), CGO_ENABLED=0 ${BUILD[*]:1}"
	echo "wrk -t1 -c$CONNS -d${DUR}s (after ${WARM}s warm-up, median of $REPEATS) on CPU $CLIENT_CPU; server on CPU $SERVER_CPU; $NFILES files in the tree"
	echo
	printf '%-7s %-5s | %9s %9s %9s | %7s %7s %7s | %6s %6s | %9s %6s | %s\n' \
		size proto respond file_srv shardcch "MiB/s r" "MiB/s f" "MiB/s s" "s/resp" "s/fs" "stock fs" "fs/stk" "targets"
	printf -- '-%.0s' $(seq 1 132); echo
	for proto in "${PROTOS[@]}"; do
		for s in "${SIZES[@]}"; do
			r=${RPS[respond/$proto/$s]:-}
			f=${RPS[file_server/$proto/$s]:-}
			c=${RPS[shardcache/$proto/$s]:-}
			k=${RPS[stock/$proto/$s]:-}
			sr=$(ratio "$c" "$r")
			sf=$(ratio "$c" "$f")
			case $s in
			1k) tgt=("0.9 resp" "3 fs") ;;
			64k) tgt=("1.5 fs") ;;
			1m) tgt=("1.0 fs") ;;
			esac
			verdict=""
			for t in "${tgt[@]}"; do
				want=${t% *}
				if [ "${t#* }" = resp ]; then got=$sr; else got=$sf; fi
				if [ "$got" = "-" ]; then v="n/a"; elif ge "$got" "$want"; then v=met; else v=MISSED; fi
				verdict+="≥${want}×${t#* } $v; "
			done
			printf '%-7s %-5s | %9s %9s %9s | %7s %7s %7s | %6s %6s | %9s %6s | %s\n' \
				"${LABEL[$s]}" "$proto" "$(cell "respond/$proto/$s")" "$(cell "file_server/$proto/$s")" "$(cell "shardcache/$proto/$s")" \
				"${MBS[respond/$proto/$s]:--}" "${MBS[file_server/$proto/$s]:--}" "${MBS[shardcache/$proto/$s]:--}" \
				"$sr" "$sf" "$(cell "stock/$proto/$s")" "$(ratio "$f" "$k")" "${verdict%; }"
		done
	done
	echo
	echo "$PRIME_LINE"
	if [ "${#NOISY[@]}" -gt 0 ]; then
		echo "~ ${#NOISY[@]} cell(s) had no quiet try (other processes used over $QUIET_PCT% of a CPU in all $QUIET_TRIES): unreliable"
	fi
	for key in "${!NOTE[@]}"; do
		echo "!! $key: ${NOTE[$key]}"
	done
} | tee "$OUT/table-$STAMP.txt"
[ "$OTHERS" = 0 ] && [ "$HEAP_SIZE" = 0 ] || others_table | tee -a "$OUT/table-$STAMP.txt"
[ "$PLUMBING" = 1 ] || "$BENCH/h2.sh" -d "$DUR" -w "$WARM" -r "$REPEATS" # HTTP/2 over TLS with h2load
