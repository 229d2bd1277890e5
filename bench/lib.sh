# bench/lib.sh: helpers shared by bench/run.sh and bench/cluster.sh, which
# source it. They expect TMP (a temp dir, removed on exit) and PIDS (the
# background processes to stop on exit), and for waitquiet QUIET_WAIT and
# QUIET_PCT, each script setting its own defaults.

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
# PIDS and remove TMP.
bench_setup() {
	local name=$1 who=$2 tmpname=$3 tool
	shift 3
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

# --- a quiet machine ---------------------------------------------------------

HZ=$(getconf CLK_TCK)
# user + nice + system + steal (time the host took from this VM's CPUs)
sys_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $9; exit}' /proc/stat; }
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
