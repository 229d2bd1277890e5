package integration

import (
	"strings"
	"testing"
)

// TestRaceReports checks how race mode (SHARDCACHE_RACE=1) finds the race
// detector's reports in a node's log: each from its "WARNING: DATA RACE"
// line to the line of "=" that closes it, JSON log lines around them left
// out. It runs no Caddy.
func TestRaceReports(t *testing.T) {
	log := strings.Join([]string{
		`{"level":"info","msg":"serving initial configuration"}`,
		`==================`,
		`WARNING: DATA RACE`,
		`Write at 0x00c000123456 by goroutine 7:`,
		`  github.com/shardcache/caddy-shardcache.(*group).apply()`,
		``,
		`Previous read at 0x00c000123456 by goroutine 9:`,
		`  github.com/shardcache/caddy-shardcache.(*group).lookup()`,
		`==================`,
		`{"level":"info","msg":"primed"}`,
		`==================`,
		`WARNING: DATA RACE`,
		`Read at 0x00c000654321 by goroutine 12:`,
		`==================`,
		`{"level":"info","msg":"shutdown complete"}`,
	}, "\n")
	rs := raceReports(log)
	if len(rs) != 2 {
		t.Fatalf("raceReports found %d reports, want 2: %q", len(rs), rs)
	}
	if !strings.HasPrefix(rs[0], raceMarker) || !strings.Contains(rs[0], "(*group).lookup()") || strings.Contains(rs[0], "primed") {
		t.Errorf("first report:\n%s", rs[0])
	}
	if !strings.HasPrefix(rs[1], raceMarker) || !strings.Contains(rs[1], "goroutine 12") || strings.Contains(rs[1], "shutdown") {
		t.Errorf("second report:\n%s", rs[1])
	}
	if rs := raceReports(`{"level":"info","msg":"no race here"}`); len(rs) != 0 {
		t.Errorf("a log without a race: %d reports", len(rs))
	}
}
