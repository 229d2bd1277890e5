# bench/lib.sh: helpers shared by bench/run.sh, cluster.sh, memory.sh and
# large.sh, which source it as "$BENCH/lib.sh" (BENCH: the bench directory)
# and then call bench_setup. They expect TMP (a temp dir, removed on exit)
# and PIDS (the background processes to stop on exit), and for waitquiet
# QUIET_WAIT and QUIET_PCT, each script setting its own defaults.

REPO=$(dirname "$BENCH")
OUT=$BENCH/out # tables, wrk output and profiles
mkdir -p "$OUT"
STAMP=$(date +%Y%m%d-%H%M%S)

# The build of ./cmd/caddy (and of stock Caddy), run with CGO_ENABLED=0.
BUILD=(go build -trimpath -tags nobadger,nomysql,nopgx)

# cleanup: stop every process of PIDS, remove TMP (the EXIT trap).
cleanup() {
	local pid
	trap '' INT TERM PIPE HUP
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$TMP"
}

log() { printf '%s\n' "$*" >&2; }

# bench_setup NAME WHO TMPNAME TOOLS...: checks that the tools are here and
# that there are two CPUs (WHO on SERVER_CPU, wrk on CLIENT_CPU), makes the
# temporary directory TMP, and sets the traps that stop every process in
# PIDS and remove TMP. NAME (the script's) becomes BENCH_NAME, the prefix
# of the helpers' messages.
bench_setup() {
	local name=$1 who=$2 tmpname=$3 tool
	shift 3
	BENCH_NAME=$name
	for tool in "$@"; do
		command -v "$tool" >/dev/null || { echo "$name: $tool not found" >&2; exit 1; }
	done
	if [ "$(nproc)" -lt 2 ]; then
		echo "$name: needs 2 CPUs ($who on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU)" >&2
		exit 1
	fi
	TMP=$(mktemp -d "/tmp/$tmpname.XXXXXX")
	PIDS=()
	trap cleanup EXIT
	trap 'exit 130' INT TERM HUP PIPE
}

# --- ports -------------------------------------------------------------------

declare -A TAKEN=()
# freeport VAR: set VAR to a loopback TCP port nothing listens on.
freeport() {
	local p
	while :; do
		p=$((20000 + RANDOM % 30000))
		[ -z "${TAKEN[$p]:-}" ] || continue
		if ss -Htan "sport = :$p" | grep -q .; then continue; fi
		TAKEN[$p]=1
		printf -v "$1" '%d' "$p"
		return
	done
}

# --- Caddy ---------------------------------------------------------------------

# caddy_start BIN CADDYFILE ADMINPORT HOME LOG WHAT: run Caddy pinned to
# CADDY_CPUS (default SERVER_CPU) with HOME and its XDG dirs below HOME (and
# CADDY_ENV, words VAR=value, in its environment), its output appended to
# LOG, and wait for its admin endpoint; sets CADDY_PID and CADDY_T0 (the
# time of the exec). If it does not start: its log, and exit (WHAT names it).
caddy_start() {
	local bin=$1 cf=$2 admin=$3 home=$4 logf=$5 what=$6 i
	mkdir -p "$home/data" "$home/config"
	CADDY_T0=$(date +%s.%N)
	# shellcheck disable=SC2086 # CADDY_ENV is words
	env ${CADDY_ENV:-} HOME="$home" XDG_DATA_HOME="$home/data" XDG_CONFIG_HOME="$home/config" \
		taskset -c "${CADDY_CPUS:-$SERVER_CPU}" "$bin" run --adapter caddyfile --config "$cf" \
		>>"$logf" 2>&1 </dev/null &
	CADDY_PID=$!
	PIDS+=("$CADDY_PID")
	for i in $(seq 1 200); do
		if curl -sf -o /dev/null "http://127.0.0.1:$admin/config/"; then
			return 0
		fi
		if ! kill -0 "$CADDY_PID" 2>/dev/null; then break; fi
		sleep 0.05
	done
	log "$BENCH_NAME: $what did not start; its log:"
	tail -n 30 "$logf" >&2
	exit 1
}

# startcaddy NAME BIN CADDYFILE ADMINPORT: caddy_start with HOME
# $TMP/home-NAME and a fresh log $TMP/NAME.log; sets CADDY_LOG too.
startcaddy() {
	local name=$1
	CADDY_LOG=$TMP/$name.log
	: >"$CADDY_LOG"
	caddy_start "$2" "$3" "$4" "$TMP/home-$name" "$CADDY_LOG" "Caddy ($name)"
}

# stopcaddy PID: stop the process (SIGTERM, SIGKILL after 10 s) and take it
# out of PIDS.
stopcaddy() {
	local pid=$1 i
	kill "$pid" 2>/dev/null || true
	for i in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	local keep=() p
	for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}

# waitprimed LOG SECS: wait for the store's "primed" log line; prints it.
waitprimed() {
	local logf=$1 secs=$2 i line
	for i in $(seq 1 $((secs * 20))); do
		line=$(grep -a '"msg"' "$logf" 2>/dev/null | jq -cR 'fromjson? | select(.msg == "primed")' 2>/dev/null | head -n 1 || true)
		if [ -n "$line" ]; then
			printf '%s\n' "$line"
			return 0
		fi
		sleep 0.05
	done
	return 1
}

# --- a cluster on loopback -------------------------------------------------------
# For cluster.sh and large.sh: node nI has its admin endpoint on port
# ADMIN[I] and its SAN address at SAN_HOSTS[I-1]:SAN_PORT, runs CADDY, and
# NPID[I] is its process.

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# sanwait WHERE: wait (up to PORT_WAIT s) for the UDP SAN ports to be free
# (other clusters on this machine may hold them for a while); exit if they
# are not, saying they are in use "on WHERE".
sanbusy() {
	local h
	for h in "${SAN_HOSTS[@]}"; do
		if ss -Huan "src $h:$SAN_PORT" | grep -q .; then return 0; fi
	done
	return 1
}
sanwait() {
	local t
	for t in $(seq 1 $((PORT_WAIT * 2))); do
		sanbusy || break
		[ "$t" = 1 ] && log "waiting (up to ${PORT_WAIT}s) for UDP ${SAN_HOSTS[*]} :$SAN_PORT to be free"
		sleep 0.5
	done
	if sanbusy; then
		log "$BENCH_NAME: UDP port $SAN_PORT is in use on $1"
		ss -Huanp "sport = :$SAN_PORT" >&2 || true
		exit 1
	fi
}

# startnode I CADDYFILE: start node nI (HOME $TMP/homeI, its output
# appended to $TMP/nI.log); sets NPID[I].
startnode() {
	caddy_start "$CADDY" "$2" "${ADMIN[$1]}" "$TMP/home$1" "$TMP/n$1.log" "n$1"
	NPID[$1]=$CADDY_PID
}

stopnode() { stopcaddy "${NPID[$1]}"; } # stopnode I

status() { curl -fsS --max-time 5 "http://127.0.0.1:${ADMIN[$1]}/shardcache/status"; }

# waitready I...: each node nI primed (ready true) and seeing all its peers
# (the other SAN_HOSTS) up and ready.
waitready() {
	local i t st peers=$((${#SAN_HOSTS[@]} - 1))
	for i in "$@"; do
		for t in $(seq 1 300); do
			st=$(status "$i" 2>/dev/null || true)
			if [ -n "$st" ] && jq -e --argjson n "$peers" '.ready and (.members | length == $n) and all(.members[]; .up and .ready)' <<<"$st" >/dev/null; then
				continue 2
			fi
			kill -0 "${NPID[$i]}" 2>/dev/null || break
			sleep 0.2
		done
		log "$BENCH_NAME: n$i not ready after 60 s; status: ${st:-none}"
		tail -n 20 "$TMP/n$i.log" >&2
		exit 1
	done
}

# --- a quiet machine ---------------------------------------------------------

HZ=$(getconf CLK_TCK)
# user + nice + system + steal (time the host took from this VM's CPUs)
sys_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $9; exit}' /proc/stat; }
# foreign_pct S0 S1 C0 C1 WORK WALL: the % of one CPU that went to anything
# but the measured processes and the client over a run: the machine's ticks
# (sys_ticks S0 to S1) less the processes' (proc_ticks C0 to C1) and the
# client's WORK seconds (user + system), over WALL seconds; 0 at least.
foreign_pct() {
	awk -v s=$(($2 - $1)) -v c=$(($4 - $3)) -v w="$5" -v hz="$HZ" -v d="$6" \
		'BEGIN { f = ((s - c) / hz - w) / d * 100; printf "%.0f", (f < 0 ? 0 : f) }'
}
proc_ticks() { # proc_ticks PID...: user+system ticks of the processes
	local p t=0
	for p in "$@"; do
		[ -r "/proc/$p/stat" ] && t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
	done
	echo "$t"
}

# waitquiet: wait (up to QUIET_WAIT s) for half a second in which the
# machine is idle but for QUIET_PCT of a CPU.
waitquiet() {
	local i a b
	for i in $(seq 1 $((QUIET_WAIT * 2))); do
		a=$(sys_ticks)
		sleep 0.5
		b=$(sys_ticks)
		if [ $(((b - a) * 200 / HZ)) -le "$QUIET_PCT" ]; then return 0; fi
	done
	return 0
}

# --- results -----------------------------------------------------------------

better() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a > b)}'; }

# keepmedian KEY RPS MBS FOREIGN: record a run of a cell; RPS and MBS hold
# the median of its quiet runs (other CPU use at most QUIET_PCT), or, while
# none of its tries (in this or an earlier repeat) has been quiet, the
# median of its noisy ones (NOISY marks it). With an even count the lower
# middle run is taken. Returns 0 if this run was quiet.
declare -A SAMPLES=() NSAMPLES=()
keepmedian() {
	local key=$1 rps=$2 mbs=$3 foreign=$4 quiet=1 list mid
	if [ "$foreign" -le "$QUIET_PCT" ]; then
		SAMPLES[$key]="${SAMPLES[$key]:-} $rps:$mbs"
		unset "NOISY[$key]"
		list=${SAMPLES[$key]}
	else
		quiet=0
		NSAMPLES[$key]="${NSAMPLES[$key]:-} $rps:$mbs"
		if [ -n "${SAMPLES[$key]:-}" ]; then
			list=${SAMPLES[$key]}
		else
			list=${NSAMPLES[$key]}
			NOISY[$key]=1
		fi
	fi
	mid=$(tr ' ' '\n' <<<"$list" | awk 'NF' | sort -t: -k1,1g | awk '{v[NR] = $0} END {print v[int((NR + 1) / 2)]}')
	RPS[$key]=${mid%%:*}
	MBS[$key]=${mid#*:}
	[ "$quiet" = 1 ]
}

# respond_bodies SIZE...: the handle blocks of a respond site that serves
# $TREE/b/SIZE.txt, each body inlined as a heredoc with an explicit
# Content-Length (net/http would chunk the larger bodies otherwise), then
# 404 for anything else; BYTES[SIZE] is each body's length.
respond_bodies() {
	local s
	for s in "$@"; do
		echo "	handle /b/$s.txt {"
		echo "		header Content-Length ${BYTES[$s]}"
		echo "		respond <<BENCHBODY"
		cat "$TREE/b/$s.txt"
		echo
		echo "BENCHBODY 200"
		echo "	}"
	done
	echo "	respond 404"
}

# tomib: MiB/s from wrk's Transfer/sec ("12.34MB", 1024-based units).
tomib() {
	awk -v t="$1" 'BEGIN {
		n = t + 0; u = t; sub(/^[0-9.]+/, "", u)
		f = (u == "GB") ? 1024 : (u == "MB") ? 1 : (u == "KB") ? 1/1024 : 1/1048576
		printf "%.1f", n * f
	}'
}

# cell KEY: req/s of KEY, "~" marking a cell no quiet try was had for.
cell() { if [ -n "${RPS[$1]:-}" ]; then printf '%s%.0f' "${NOISY[$1]:+~}" "${RPS[$1]}"; else echo "-"; fi; }
