package shardcache

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shardcache/caddy-shardcache/cluster"
	"github.com/shardcache/caddy-shardcache/peering"
)

func TestMetricsCollect(t *testing.T) {
	h := newBenchHandler(t, 100)
	stats := new(cluster.Stats)
	for range 3 {
		stats.Count(cluster.TierLocal, 100)
	}
	stats.CountPeerError(peering.ErrPeerDown)
	stats.CountPeerError(errors.New("boom"))
	reg.set(nil, []source{{name: "site", store: h.store, stats: stats}}, nil)
	t.Cleanup(func() { reg.set(nil, nil, nil) })

	r1, r2 := prometheus.NewRegistry(), prometheus.NewRegistry()
	for _, r := range []*prometheus.Registry{r1, r2, r2} { // twice: tolerated
		if err := registerMetrics(r); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP caddy_shardcache_requests_total Requests answered, by the tier that had the bytes (local: this node's memory, or metadata only for HEAD/304; hot: copies of other nodes' items; peer: fetched from the owner; storage: read from disk).
# TYPE caddy_shardcache_requests_total counter
caddy_shardcache_requests_total{group="site",tier="hot"} 0
caddy_shardcache_requests_total{group="site",tier="local"} 3
caddy_shardcache_requests_total{group="site",tier="peer"} 0
caddy_shardcache_requests_total{group="site",tier="storage"} 0
# HELP caddy_shardcache_peer_errors_total Peer fetches that failed (the request was then served from storage), by kind: down, timeout, not_found, other.
# TYPE caddy_shardcache_peer_errors_total counter
caddy_shardcache_peer_errors_total{group="site",kind="down"} 1
caddy_shardcache_peer_errors_total{group="site",kind="not_found"} 0
caddy_shardcache_peer_errors_total{group="site",kind="other"} 1
caddy_shardcache_peer_errors_total{group="site",kind="timeout"} 0
# HELP caddy_shardcache_primed_items Items primed into this node's memory.
# TYPE caddy_shardcache_primed_items gauge
caddy_shardcache_primed_items{group="site"} 1
`
	for _, r := range []*prometheus.Registry{r1, r2} {
		if err := testutil.GatherAndCompare(r, strings.NewReader(want),
			"caddy_shardcache_requests_total", "caddy_shardcache_peer_errors_total", "caddy_shardcache_primed_items"); err != nil {
			t.Error(err)
		}
	}
	// The values live in the stats, not in the registry: a new registry
	// (a reload) sees them keep counting.
	stats.Count(cluster.TierLocal, 1)
	r3 := prometheus.NewRegistry()
	if err := registerMetrics(r3); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(r3, "caddy_shardcache_requests_total"); err != nil || n != 4 {
		t.Fatalf("requests_total series = %d, %v", n, err)
	}
	mfs, _ := r3.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "caddy_shardcache_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == "local" && m.GetCounter().GetValue() != 4 {
					t.Errorf("local after reload = %v, want 4", m.GetCounter().GetValue())
				}
			}
		}
	}
}
