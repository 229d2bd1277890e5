package shardcache

import (
	"testing"
	"time"

	"github.com/shardcache/caddy-shardcache/cluster"
	"github.com/shardcache/caddy-shardcache/shard"
)

func TestMemoryLimit(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct{ held, meta, live, want int64 }{
		{0, 0, 10 * mib, 64 * mib},                      // an empty site: the overhead
		{200 * mib, 0, 240 * mib, 284 * mib},            // 1.1 × held + 64 MiB
		{200 * mib, 0, 300 * mib, 332 * mib},            // more live heap than that: room above it
		{1 << 30, 0, 1100 * mib, 1126*mib + 64*mib + 1}, // rounding: 1.1 × 1 GiB = 1126.4 MiB
		{200 * mib, 300 * mib, 540 * mib, 614 * mib},    // 1.1 × (held + metadata) + 64 MiB
		{0, 500 * mib, 520 * mib, 614 * mib},            // millions of files with no bytes held
	} {
		got := memoryLimit(tc.held, tc.meta, tc.live)
		if d := got - tc.want; d < -mib || d > mib {
			t.Errorf("memoryLimit(%d MiB, %d MiB, %d MiB) = %.1f MiB; want %.1f MiB",
				tc.held/mib, tc.meta/mib, tc.live/mib, float64(got)/mib, float64(tc.want)/mib)
		}
	}
	if got, want := primingLimit(1<<30, 100*mib), int64(1126*mib+110*mib+64*mib); got-want < -mib || got-want > mib {
		t.Errorf("primingLimit(1 GiB, 100 MiB) = %.1f MiB; want %.1f MiB", float64(got)/mib, float64(want)/mib)
	}
}

// TestArenaLimit: with bodies in arenas the limit leaves room for half the
// live heap in garbage once primed, as much as the live heap while
// priming, and never lowers a limit that already does.
func TestArenaLimit(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		limit, live int64
		primed      bool
		want        int64
	}{
		{100 * mib, 200 * mib, true, 300 * mib},
		{100 * mib, 200 * mib, false, 400 * mib},
		{500 * mib, 200 * mib, true, 500 * mib},
		{500 * mib, 200 * mib, false, 500 * mib},
		{64 * mib, 0, false, 64 * mib},
	} {
		if got := arenaLimit(tc.limit, tc.live, tc.primed); got != tc.want {
			t.Errorf("arenaLimit(%d MiB, live %d MiB, primed %v) = %d MiB, want %d MiB",
				tc.limit/mib, tc.live/mib, tc.primed, got/mib, tc.want/mib)
		}
	}
}

// fixedMeta reports a fixed metadata size.
type fixedMeta int64

func (m fixedMeta) MetadataBytes() int64 { return int64(m) }

// TestMetadataOfCluster: every store counts once, and the cluster counts
// with its tables of content.
func TestMetadataOfCluster(t *testing.T) {
	st, err := shard.New(shard.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ms := metadataOf([]source{{store: st}, {store: st}}, nil)
	if len(ms) != 1 {
		t.Errorf("metadataOf: %d sources for one store shared by two sites; want 1", len(ms))
	}
	if n := metadataBytes(append(ms, fixedMeta(1000))); n != st.MetadataBytes()+1000 {
		t.Errorf("metadataBytes = %d; want %d", n, st.MetadataBytes()+1000)
	}
	if got := len(metadataOf(nil, &clusterRef{})); got != 0 {
		t.Errorf("metadataOf counts a config without a cluster: %d sources", got)
	}
	m := cluster.NewMembership("n1", false, nil, 1)
	c := cluster.New(cluster.Config{Name: "n1"}, m)
	c.Commit(cluster.Commit{Members: m, Groups: []cluster.GroupConfig{{Name: "site", Store: st}}})
	ms = metadataOf(nil, &clusterRef{Cluster: c})
	if len(ms) != 1 {
		t.Fatalf("metadataOf leaves the cluster's tables of content out: %d sources", len(ms))
	}
	if n, want := metadataBytes(ms), c.MetadataBytes(); n != want {
		t.Errorf("metadataBytes = %d; want the cluster's %d", n, want)
	}
}

// TestStepDown: the limit goes at most limitStep below the memory the
// runtime holds, never below the heap in use plus minHeadroom, and is kept
// when it is above both already.
func TestStepDown(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct{ limit, mapped, inUse, want int64 }{
		{300 * mib, 2000 * mib, 200 * mib, 2000*mib - limitStep}, // just primed: a step below what is held
		{300 * mib, 400 * mib, 200 * mib, 300 * mib},             // within a step: the limit itself
		{300 * mib, 300*mib + limitStep, 200 * mib, 300 * mib},   // exactly a step
		{2400 * mib, 500 * mib, 400 * mib, 2400 * mib},           // priming: far above
		{300 * mib, 450 * mib, 400 * mib, 400*mib + minHeadroom}, // priming's garbage not collected yet: above it
	} {
		if got := stepDown(tc.limit, tc.mapped, tc.inUse); got != tc.want {
			t.Errorf("stepDown(%d MiB, %d MiB, %d MiB) = %d MiB; want %d MiB", tc.limit/mib, tc.mapped/mib, tc.inUse/mib, got/mib, tc.want/mib)
		}
	}
}

// TestReadiness: the stores are "just primed" on the first tick they are all
// ready, settled settleAfter later, and both start over when a store primes
// again (a reload with a new root).
func TestReadiness(t *testing.T) {
	var r readiness
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		at          time.Duration
		ready       bool
		justPrimed  bool
		wantSettled bool
	}{
		{0, false, false, false},
		{time.Second, true, true, false},
		{2 * time.Second, true, false, false},
		{settleAfter, true, false, false},
		{settleAfter + time.Second, true, false, true},
		{settleAfter + 2*time.Second, true, false, true},
		{settleAfter + 3*time.Second, false, false, false}, // a new store primes
		{settleAfter + 4*time.Second, true, true, false},
		{2*settleAfter + 3*time.Second, true, false, false},
		{2*settleAfter + 4*time.Second, true, false, true},
	} {
		if got := r.update(tc.ready, t0.Add(tc.at)); got != tc.justPrimed || r.settled != tc.wantSettled {
			t.Errorf("at %v, ready %v: just primed %v, settled %v; want %v, %v", tc.at, tc.ready, got, r.settled, tc.justPrimed, tc.wantSettled)
		}
	}
}
