package spread

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

// TestTrackerSpreadsAndCools: a path that takes a large share is spread,
// with a width that follows its share, and leaves the set once it cools
// down; paths of a uniform load over many paths are never spread.
func TestTrackerSpreadsAndCools(t *testing.T) {
	var changes atomic.Int64
	tr := New(Config{Window: 1 << 14, OnChange: func() { changes.Add(1) }})
	r := rand.New(rand.NewPCG(1, 2))
	const members = 10
	// Phase 1: /hot is 20% of the traffic, the rest uniform over 5000
	// paths (0.016% each, far under 1/(64·10) = 0.16%).
	for i := range 100_000 {
		p := "/hot"
		if i%5 != 0 {
			p = fmt.Sprintf("/cold/%d", r.IntN(5000))
		}
		tr.Observe(p, members)
	}
	paths := tr.Paths()
	if len(paths) != 1 || paths[0].Name != "/hot" {
		var names []string
		for _, p := range paths {
			names = append(names, fmt.Sprintf("%s %.4f", p.Name, p.Share()))
		}
		t.Fatalf("spread set %v; want only /hot", names)
	}
	if w := paths[0].Width(); w != members {
		t.Errorf("/hot at 20%% of the traffic has width %d; want all %d members (16 × 0.2 × 10 = 32, capped)", w, members)
	}
	if s := paths[0].Share(); s < 0.15 || s > 0.25 {
		t.Errorf("/hot's share estimated at %.3f; want about 0.2", s)
	}
	if changes.Load() == 0 {
		t.Error("OnChange was never called")
	}
	// Phase 2: /hot is no longer asked for: it cools down, its count
	// halving every window (20% → under 0.08% in 8).
	for range 10 * (1 << 14) {
		tr.Observe(fmt.Sprintf("/cold/%d", r.IntN(5000)), members)
	}
	if p := tr.Lookup("/hot"); p != nil {
		t.Fatalf("/hot still spread (share %.4f) after 10 windows without a request", p.Share())
	}
	if n := len(tr.Paths()); n != 0 {
		t.Fatalf("%d paths spread under a uniform load", n)
	}
}

// TestTrackerQuiet: nothing is spread before MinTotal requests, however
// skewed they are.
func TestTrackerQuiet(t *testing.T) {
	tr := New(Config{})
	for i := range 16383 {
		if p := tr.Observe(fmt.Sprintf("/p%d", i%50), 3); p != nil {
			t.Fatalf("%s spread after %d requests", p.Name, i+1)
		}
	}
	if p := tr.Observe("/p0", 3); p == nil {
		t.Fatal("/p0, 2% of 16384 requests over 3 members, not spread")
	}
}

// TestTrackerOneMember: with one member nothing is spread.
func TestTrackerOneMember(t *testing.T) {
	tr := New(Config{})
	for range 10_000 {
		if p := tr.Observe("/x", 1); p != nil {
			t.Fatal("a path was spread over one member")
		}
	}
}

// TestTwo: two distinct indices, every pair about as often.
func TestTwo(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{2, 3, 7, 50} {
		seen := map[[2]int]int{}
		for range 20_000 {
			a, b := Two(n, r.Uint64())
			if a == b || a < 0 || b < 0 || a >= n || b >= n {
				t.Fatalf("Two(%d) = %d, %d", n, a, b)
			}
			seen[[2]int{a, b}]++
		}
		if n <= 7 && len(seen) != n*(n-1) {
			t.Errorf("Two(%d): %d ordered pairs seen; want %d", n, len(seen), n*(n-1))
		}
	}
	if a, b := Two(1, 5); a != 0 || b != 0 {
		t.Errorf("Two(1) = %d, %d", a, b)
	}
}

// BenchmarkObserve is the per-request cost of the popularity estimate on
// a Zipf (s = 1.1) mix over 10,000 paths: the target is ≤ 200 ns and no
// allocation.
func BenchmarkObserve(b *testing.B) {
	const n = 10_000
	paths := make([]string, n)
	for i := range paths {
		paths[i] = fmt.Sprintf("/d%02d/item-%05d.bin", i%100, i)
	}
	z := newZipf(n, 1.1)
	r := rand.New(rand.NewPCG(1, 1))
	seq := make([]string, 1<<16)
	for i := range seq {
		seq[i] = paths[z.next(r)]
	}
	tr := New(Config{})
	for _, p := range seq { // warm: the spread set is built
		tr.Observe(p, 10)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		tr.Observe(seq[i&(len(seq)-1)], 10)
	}
}

// BenchmarkObserveParallel is the same from every CPU at once.
func BenchmarkObserveParallel(b *testing.B) {
	const n = 10_000
	paths := make([]string, n)
	for i := range paths {
		paths[i] = fmt.Sprintf("/d%02d/item-%05d.bin", i%100, i)
	}
	z := newZipf(n, 1.1)
	r := rand.New(rand.NewPCG(1, 1))
	seq := make([]string, 1<<16)
	for i := range seq {
		seq[i] = paths[z.next(r)]
	}
	tr := New(Config{})
	for _, p := range seq {
		tr.Observe(p, 10)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := rand.IntN(len(seq))
		for pb.Next() {
			tr.Observe(seq[i&(len(seq)-1)], 10)
			i++
		}
	})
}
