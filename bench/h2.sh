#!/usr/bin/env bash
# bench/h2.sh: HTTP/2 over TLS with h2load (-c 32 -m 10: 32 connections,
# 10 concurrent streams each): shardcache vs Caddy's respond vs file_server,
# 1 KiB and 64 KiB bodies, as ratios measured in one run, one Caddy serving
# all three (tls internal). bench/run.sh calls it last. See bench/README.md.
#
#   bench/h2.sh [-d secs] [-w secs] [-r repeats]
set -euo pipefail

DUR=5       # seconds measured per cell (h2load -D)
WARM=1      # h2load --warm-up-time
REPEATS=1   # measure every cell this many times, report the median
SERVER_CPU=1
CLIENT_CPU=0

usage() {
	sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
	cat <<EOF
  -d secs     measured duration of each h2load run (default $DUR)
  -w secs     warm-up of each run (default $WARM)
  -r n        repeat every measurement n times and report the median (default 1)
EOF
}

while getopts "d:w:r:h" opt; do
	case $opt in
	d) DUR=$OPTARG ;;
	w) WARM=$OPTARG ;;
	r) REPEATS=$OPTARG ;;
	h) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done

# h2load is Debian's nghttp2-client.
if ! command -v h2load >/dev/null && command -v apt-get >/dev/null; then
	SUDO=""
	if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
	echo "h2.sh: installing nghttp2-client (h2load)" >&2
	$SUDO apt-get install -y -qq nghttp2-client >/dev/null 2>&1 ||
		{ $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nghttp2-client >/dev/null; }
fi

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$BENCH/lib.sh" # REPO, OUT, STAMP and the helpers

bench_setup h2.sh server shardh2 go h2load taskset curl jq sha256sum ss
QUIET_PCT=${QUIET_PCT:-10}
QUIET_WAIT=${QUIET_WAIT:-60}
QUIET_TRIES=${QUIET_TRIES:-6}

mkdir -p "$TMP/bin"
log "building ./cmd/caddy: CGO_ENABLED=0 ${BUILD[*]}"
(cd "$REPO" && CGO_ENABLED=0 "${BUILD[@]}" -o "$TMP/bin/caddy" ./cmd/caddy)
(cd "$REPO" && go build -o "$TMP/bin/gentree" ./bench/gentree)
CADDY=$TMP/bin/caddy

TREE=$TMP/tree
"$TMP/bin/gentree" -bench "$TREE"
SIZES=(1k 64k)
declare -A BYTES=([1k]=1024 [64k]=65536)
declare -A LABEL=([1k]="1 KiB" [64k]="64 KiB")
declare -A SUM=()
for s in "${SIZES[@]}"; do
	SUM[$s]=$(sha256sum <"$TREE/b/$s.txt" | cut -d' ' -f1)
done

SERVERS=(respond file_server shardcache)
declare -A PORT=()
freeport ADMIN
for srv in "${SERVERS[@]}"; do
	freeport SITE_PORT # (freeport's own local is p)
	PORT[$srv]=$SITE_PORT
done

# One Caddy, three HTTPS sites (HTTP/1.1 and HTTP/2; no HTTP/3: h2load
# speaks h2 here). respond holds each body in the config, with its
# Content-Length.
{
	cat <<EOF
{
	admin 127.0.0.1:$ADMIN
	persist_config off
	skip_install_trust
	auto_https disable_redirects
	servers {
		protocols h1 h2
	}
}
https://127.0.0.1:${PORT[respond]} {
	tls internal
EOF
	respond_bodies "${SIZES[@]}"
	echo "}"
	printf 'https://127.0.0.1:%s {\n\ttls internal\n\troot * %s\n\tfile_server\n}\n' "${PORT[file_server]}" "$TREE"
	printf 'https://127.0.0.1:%s {\n\ttls internal\n\tshardcache {\n\t\troot %s\n\t\tmemory 256MiB\n\t}\n}\n' "${PORT[shardcache]}" "$TREE"
} >"$TMP/h2.caddy"

url() { echo "https://127.0.0.1:${PORT[$1]}/b/$2.txt"; } # url SERVER SIZE

# check SERVER SIZE: 200 over HTTP/2 with exactly the file's bytes.
check() {
	local u body code ver sum
	u=$(url "$@")
	body=$TMP/check.body
	read -r code ver < <(curl -sk --http2 -o "$body" -w '%{http_code} %{http_version}\n' "$u" || echo "000 -")
	sum=$(sha256sum <"$body" | cut -d' ' -f1)
	if [ "$code" != 200 ] || [ "$ver" != 2 ] || [ "$sum" != "${SUM[$2]}" ]; then
		log "h2.sh: $u: status $code over HTTP/$ver, $(stat -c %s "$body") bytes, sha256 ${sum:0:12} (want 200 over HTTP/2, ${SUM[$2]:0:12})"
		return 1
	fi
}

declare -A RPS=() MBS=() NOTE=() NOISY=()
TLSINFO=""

# measure SERVER SIZE: h2load -c 32 -m 10 for DUR s after WARM s, on the
# client CPU; report the median of the quiet runs (as bench/run.sh: a run where other
# processes used more than QUIET_PCT of a CPU is redone, up to QUIET_TRIES).
measure() {
	local srv=$1 size=$2 key=$1/$2 u res rps mbs fails try s0 s1 c0 c1 wt wall foreign quiet=0
	u=$(url "$srv" "$size")
	for try in $(seq 1 "$QUIET_TRIES"); do
		waitquiet
		s0=$(sys_ticks)
		c0=$(proc_ticks "$CADDY_PID")
		{ TIMEFORMAT='%3U %3S %3R'; time timeout $((DUR + WARM + 60)) taskset -c "$CLIENT_CPU" h2load -t 1 -c 32 -m 10 -D "$DUR" --warm-up-time="$WARM" "$u" >"$TMP/h2load.out" 2>&1 || true; } 2>"$TMP/h2load.time"
		s1=$(sys_ticks)
		c1=$(proc_ticks "$CADDY_PID")
		res=$(cat "$TMP/h2load.out")
		wt=$(awk '{print $1 + $2}' "$TMP/h2load.time")
		wall=$(awk '{print $3}' "$TMP/h2load.time")
		foreign=$(foreign_pct "$s0" "$s1" "$c0" "$c1" "$wt" "$wall")
		printf '== %s %s (try %d, other CPU use %s%%)\n%s\n' "$key" "$u" "$try" "$foreign" "$res" >>"$OUT/h2load-$STAMP.txt"
		# "finished in 5.00s, 12345.60 req/s, 13.21MB/s"
		rps=$(awk '/^finished in/ {gsub(",", ""); print $4}' <<<"$res")
		mbs=$(tomib "$(awk '/^finished in/ {gsub(",", ""); print $6}' <<<"$res" | sed 's|/s$||')")
		fails=$(awk '/^requests:/ {gsub(",", ""); if ($10 + $12 + $14 > 0) print $10 " failed, " $12 " errored, " $14 " timeout"} /^status codes:/ {gsub(",", ""); if ($5 + $7 + $9 > 0) print $5 " 3xx, " $7 " 4xx, " $9 " 5xx"}' <<<"$res" | paste -sd' ')
		if [ -z "$rps" ] || ! better "$rps" 0; then
			# h2load failed, or counted nothing in its measured phase (seen
			# on an overloaded machine): not a measurement; try again.
			log "  $key: h2load measured nothing (try $try): $(grep -m1 -E '^(finished|error|fatal)' "$TMP/h2load.out" || tail -n 1 "$TMP/h2load.out")"
			continue
		fi
		if [ -n "$fails" ]; then NOTE[$key]=$fails; fi
		TLSINFO=$(awk -F': ' '/^TLS Protocol:/ {t = $2} /^Cipher:/ {c = $2} /^Application protocol:/ {a = $2} END {print t ", " c ", ALPN " a}' <<<"$res")
		if [[ $TLSINFO != *"ALPN h2" ]]; then
			log "h2.sh: h2load did not speak HTTP/2 to $u ($TLSINFO)"
			exit 1
		fi
		if keepmedian "$key" "$rps" "$mbs" "$foreign"; then quiet=1; fi
		log "  $(printf '%-18s %10.0f req/s %9s MiB/s  (other CPU use %3s%%)' "$key" "$rps" "$mbs" "$foreign")${fails:+  !! $fails}"
		[ "$quiet" = 0 ] || break
	done
}

log "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1); server on CPU $SERVER_CPU, h2load on CPU $CLIENT_CPU"
startcaddy h2 "$CADDY" "$TMP/h2.caddy" "$ADMIN"
if line=$(waitprimed "$CADDY_LOG" 60); then log "  store: $line"; fi
for srv in "${SERVERS[@]}"; do
	for s in "${SIZES[@]}"; do
		# the internal CA's certificates may take a moment
		for i in $(seq 1 50); do check "$srv" "$s" 2>/dev/null && break; sleep 0.1; done
		check "$srv" "$s"
	done
done
for r in $(seq 1 "$REPEATS"); do
	for s in "${SIZES[@]}"; do
		for srv in "${SERVERS[@]}"; do
			measure "$srv" "$s"
		done
	done
done
stopcaddy "$CADDY_PID"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print "-"; else printf "%.2f", a / b }'; }

{
	echo "shardcache h2load bench $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
	echo "$(go version | cut -d' ' -f3), Caddy $("$CADDY" version | cut -d' ' -f1), $(h2load --version | head -n 1)"
	echo "h2load -t 1 -c 32 -m 10 -D $DUR --warm-up-time=$WARM (median of $REPEATS; $TLSINFO) on CPU $CLIENT_CPU; server on CPU $SERVER_CPU"
	echo
	printf '%-7s | %9s %9s %9s | %7s %7s %7s | %6s %6s\n' size respond file_srv shardcch "MiB/s r" "MiB/s f" "MiB/s s" "s/resp" "s/fs"
	printf -- '-%.0s' $(seq 1 82); echo
	for s in "${SIZES[@]}"; do
		r=${RPS[respond/$s]:-} f=${RPS[file_server/$s]:-} c=${RPS[shardcache/$s]:-}
		printf '%-7s | %9s %9s %9s | %7s %7s %7s | %6s %6s\n' "${LABEL[$s]}" \
			"$(cell "respond/$s")" "$(cell "file_server/$s")" "$(cell "shardcache/$s")" \
			"${MBS[respond/$s]:--}" "${MBS[file_server/$s]:--}" "${MBS[shardcache/$s]:--}" \
			"$(ratio "$c" "$r")" "$(ratio "$c" "$f")"
	done
	if [ "${#NOISY[@]}" -gt 0 ]; then
		echo "~ ${#NOISY[@]} cell(s) had no quiet try (other processes used over $QUIET_PCT% of a CPU in all $QUIET_TRIES): unreliable"
	fi
	for key in "${!NOTE[@]}"; do
		echo "!! $key: ${NOTE[$key]}"
	done
} | tee "$OUT/h2-table-$STAMP.txt"
