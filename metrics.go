package shardcache

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shardcache/caddy-shardcache/cluster"
	"github.com/shardcache/caddy-shardcache/shard"
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
	descSpreadRequests = prometheus.NewDesc("caddy_shardcache_spread_requests_total",
		"Requests a director routed among the members of a spread (hot) path's set.", nil, nil)
	descSpreadPaths = prometheus.NewDesc("caddy_shardcache_spread_paths",
		"Paths a director spreads over more members than their owner now.", nil, nil)
	descPushedItems = prometheus.NewDesc("caddy_shardcache_pushed_items_total",
		"Copies a content node fetched from their holder to carry a spread path for a director.", nil, nil)
	descPushedBytes = prometheus.NewDesc("caddy_shardcache_pushed_bytes_total",
		"Bytes of those copies (they cross the SAN).", nil, nil)
	descCarried = prometheus.NewDesc("caddy_shardcache_carried_paths",
		"Spread paths a content node carries for directors now.", nil, nil)
)

// statsCollector reads the running config's counters at scrape time.
type statsCollector struct{}

func (statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descBytes, descPeerErrors, descServed,
		descPrimedItems, descPrimedBytes, descResidentBytes, descReady, descHotItems, descHotBytes,
		descHotAdmissions, descHotEvictions, descPeersUp, descPeers,
		descSpreadRequests, descSpreadPaths, descPushedItems, descPushedBytes, descCarried} {
		ch <- d
	}
}

// Collect reports the running config's counters. Several handlers may
// share a group (or, on a single node, a root) with stores of their own
// (two sites on one root with different budgets): their values are summed
// into one series per label set, so the registry never sees a duplicate.
func (statsCollector) Collect(ch chan<- prometheus.Metric) {
	sources, c := reg.get()
	type group struct {
		items, bytes, resident int64
		ready                  bool
		stats                  []*cluster.Stats
		hot                    []*shard.Hot
	}
	var order []string
	groups := map[string]*group{}
	seenStore := map[*shard.Store]bool{}
	seenStats := map[*cluster.Stats]bool{}
	seenHot := map[*shard.Hot]bool{}
	for _, src := range sources {
		g := groups[src.name]
		if g == nil {
			g = &group{ready: true}
			groups[src.name] = g
			order = append(order, src.name)
		}
		if !seenStore[src.store] {
			seenStore[src.store] = true
			st := src.store.Stats()
			g.items += st.PrimedItems
			g.bytes += st.PrimedBytes
			g.resident += st.ResidentBytes
			g.ready = g.ready && src.store.Ready()
		}
		if !seenStats[src.stats] {
			seenStats[src.stats] = true
			g.stats = append(g.stats, src.stats)
		}
		if src.grp != nil {
			if h := src.grp.Hot(); h != nil && !seenHot[h] {
				seenHot[h] = true
				g.hot = append(g.hot, h)
			}
		}
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	for _, name := range order {
		g := groups[name]
		gauge(descPrimedItems, g.items, name)
		gauge(descPrimedBytes, g.bytes, name)
		gauge(descResidentBytes, g.resident, name)
		ready := int64(0)
		if g.ready {
			ready = 1
		}
		gauge(descReady, ready, name)
		var sum cluster.Snapshot
		for i, st := range g.stats {
			snap := st.Snapshot()
			if i == 0 {
				sum = snap
				continue
			}
			for k, v := range snap.Tiers {
				t := sum.Tiers[k]
				sum.Tiers[k] = cluster.TierCount{Requests: t.Requests + v.Requests, Bytes: t.Bytes + v.Bytes}
			}
			for k, v := range snap.PeerErrors {
				sum.PeerErrors[k] += v
			}
			sum.Served += snap.Served
		}
		for _, tier := range cluster.Tiers {
			counter(descRequests, sum.Tiers[tier].Requests, name, tier)
			counter(descBytes, sum.Tiers[tier].Bytes, name, tier)
		}
		for _, kind := range cluster.PeerErrorKinds {
			counter(descPeerErrors, sum.PeerErrors[kind], name, kind)
		}
		counter(descServed, sum.Served, name)
		if len(g.hot) > 0 {
			var hs shard.HotStats
			for _, h := range g.hot {
				s := h.Stats()
				hs.Items += s.Items
				hs.Bytes += s.Bytes
				hs.Admits += s.Admits
				hs.Evicts += s.Evicts
			}
			gauge(descHotItems, hs.Items, name)
			gauge(descHotBytes, hs.Bytes, name)
			counter(descHotAdmissions, hs.Admits, name)
			counter(descHotEvictions, hs.Evicts, name)
		}
	}
	if c != nil {
		if n := c.Node(); n != nil {
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
		if c.Observer() {
			counter(descSpreadRequests, spreadRequests.Load())
			gauge(descSpreadPaths, int64(len(spreadStatus())))
		} else {
			ps := c.PushStats()
			counter(descPushedItems, ps.Items)
			counter(descPushedBytes, ps.Bytes)
			gauge(descCarried, int64(ps.Carried))
		}
	}
}
