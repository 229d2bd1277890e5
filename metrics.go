package shardcache

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shardcache/caddy-shardcache/peering"
)

// Metrics, all named caddy_shardcache_*. The counters live in the stores,
// groups and hot caches, which survive reloads; the collector reads them
// at scrape time. Caddy makes a new registry for every config, so
// registerMetrics registers the same collectors with each one, and the
// values keep counting across reloads. Labels come from small fixed sets
// (tier, kind) or the config (group): never paths or clients.
var (
	peerFetchSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "caddy",
		Subsystem: "shardcache",
		Name:      "peer_fetch_duration_seconds",
		Help:      "Time to fetch an item's bytes from its owner over the SAN, successful fetches only.",
		Buckets:   []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	})
	collector = statsCollector{}
)

// registerMetrics registers the collectors with a config's registry. A
// second registration with the same registry (a second app instance) is
// expected and ignored.
func registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{peerFetchSeconds, collector} {
		var already prometheus.AlreadyRegisteredError
		if err := reg.Register(c); err != nil && !errors.As(err, &already) {
			return err
		}
	}
	return nil
}

// observePeerFetch records a successful peer fetch's latency.
func observePeerFetch(d time.Duration) { peerFetchSeconds.Observe(d.Seconds()) }

// peerErrorKind maps a peer fetch error to a small fixed set of labels.
func peerErrorKind(err error) string {
	switch {
	case errors.Is(err, peering.ErrPeerDown):
		return "down"
	case errors.Is(err, peering.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, peering.ErrNotFound):
		return "not_found"
	default:
		return "other"
	}
}

// peerErrorKinds are the values of the kind label, in the order of
// tierStats.peerErrorsByKind.
var peerErrorKinds = [...]string{"down", "timeout", "not_found", "other"}

// countPeerError counts a failed peer fetch by kind.
func (t *tierStats) countPeerError(err error) {
	t.peerErrors.Add(1)
	kind := peerErrorKind(err)
	for i, k := range peerErrorKinds {
		if k == kind {
			t.peerErrorsByKind[i].Add(1)
		}
	}
}

var (
	descRequests = prometheus.NewDesc("caddy_shardcache_requests_total",
		"Requests answered, by the tier that had the bytes (local: this node's memory, or metadata only for HEAD/304; hot: copies of other nodes' items; peer: fetched from the owner; storage: read from disk).",
		[]string{"group", "tier"}, nil)
	descBytes = prometheus.NewDesc("caddy_shardcache_bytes_total",
		"Body bytes served, by tier.", []string{"group", "tier"}, nil)
	descPeerErrors = prometheus.NewDesc("caddy_shardcache_peer_errors_total",
		"Peer fetches that failed (the request was then served from storage), by kind: down, timeout, not_found, other.",
		[]string{"group", "kind"}, nil)
	descServed = prometheus.NewDesc("caddy_shardcache_peer_served_total",
		"Fetches this node answered for its peers.", []string{"group"}, nil)
	descPrimedItems = prometheus.NewDesc("caddy_shardcache_primed_items",
		"Items primed into this node's memory.", []string{"group"}, nil)
	descPrimedBytes = prometheus.NewDesc("caddy_shardcache_primed_bytes",
		"Bytes primed into this node's memory.", []string{"group"}, nil)
	descResidentBytes = prometheus.NewDesc("caddy_shardcache_resident_bytes",
		"Bytes of this node's own items held in memory now (at most the memory budget).", []string{"group"}, nil)
	descReady = prometheus.NewDesc("caddy_shardcache_ready",
		"1 once the group's share is primed.", []string{"group"}, nil)
	descHotItems = prometheus.NewDesc("caddy_shardcache_hot_items",
		"Copies of other nodes' items held in the hot cache.", []string{"group"}, nil)
	descHotBytes = prometheus.NewDesc("caddy_shardcache_hot_bytes",
		"Bytes held in the hot cache (at most its budget).", []string{"group"}, nil)
	descHotAdmissions = prometheus.NewDesc("caddy_shardcache_hot_admissions_total",
		"Copies admitted into the hot cache.", []string{"group"}, nil)
	descHotEvictions = prometheus.NewDesc("caddy_shardcache_hot_evictions_total",
		"Copies evicted from the hot cache to make room.", []string{"group"}, nil)
	descPeersUp = prometheus.NewDesc("caddy_shardcache_peers_up",
		"Configured peers with a live connection.", nil, nil)
	descPeers = prometheus.NewDesc("caddy_shardcache_peers",
		"Configured peers.", nil, nil)
)

// statsCollector reads the running config's counters at scrape time.
type statsCollector struct{}

func (statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descBytes, descPeerErrors, descServed,
		descPrimedItems, descPrimedBytes, descResidentBytes, descReady, descHotItems, descHotBytes,
		descHotAdmissions, descHotEvictions, descPeersUp, descPeers} {
		ch <- d
	}
}

func (statsCollector) Collect(ch chan<- prometheus.Metric) {
	sources, c := reg.get()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	seen := map[*tierStats]bool{}
	for _, src := range sources {
		g := src.name
		st := src.store.Stats()
		gauge(descPrimedItems, st.PrimedItems, g)
		gauge(descPrimedBytes, st.PrimedBytes, g)
		gauge(descResidentBytes, st.ResidentBytes, g)
		ready := int64(0)
		if src.store.Ready() {
			ready = 1
		}
		gauge(descReady, ready, g)
		if seen[src.stats] {
			continue
		}
		seen[src.stats] = true
		t := src.stats
		for _, tc := range []struct {
			tier     string
			n, bytes int64
		}{
			{"local", t.local.Load(), t.localBytes.Load()},
			{"hot", t.hot.Load(), t.hotBytes.Load()},
			{"peer", t.peer.Load(), t.peerBytes.Load()},
			{"storage", t.storage.Load(), t.storageBytes.Load()},
		} {
			counter(descRequests, tc.n, g, tc.tier)
			counter(descBytes, tc.bytes, g, tc.tier)
		}
		for i, kind := range peerErrorKinds {
			counter(descPeerErrors, t.peerErrorsByKind[i].Load(), g, kind)
		}
		counter(descServed, t.served.Load(), g)
		if src.grp != nil {
			if h := src.grp.hot.Load(); h != nil {
				hs := h.Stats()
				gauge(descHotItems, hs.Items, g)
				gauge(descHotBytes, hs.Bytes, g)
				counter(descHotAdmissions, hs.Admits, g)
				counter(descHotEvictions, hs.Evicts, g)
			}
		}
	}
	if c != nil {
		if n := c.node.Load(); n != nil {
			up, all := 0, 0
			for _, p := range n.Peers() {
				all++
				if p.Up {
					up++
				}
			}
			gauge(descPeersUp, int64(up), nil...)
			gauge(descPeers, int64(all), nil...)
		}
	}
}
