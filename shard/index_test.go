package shard

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// The index against a map, through random stores, replacements and
// deletes (with growth, shrinking and tombstone reuse along the way).
func TestIndexModel(t *testing.T) {
	x := newIndex()
	model := map[string]*Item{}
	r := rand.New(rand.NewPCG(1, 2))
	for step := range 100_000 {
		p := fmt.Sprintf("/d%d/f%d", r.IntN(40), r.IntN(400))
		switch r.IntN(3) {
		case 0, 1:
			it := &Item{Path: p, Size: int64(step)}
			x.store(it)
			model[p] = it
		case 2:
			x.delete(p)
			delete(model, p)
		}
		if step%5000 == 0 || step > 99_990 {
			if x.live != len(model) {
				t.Fatalf("step %d: live %d, model %d", step, x.live, len(model))
			}
			for q, want := range model {
				if got, ok := x.load(q); !ok || got != want {
					t.Fatalf("step %d: load(%s) = %v, %v; want %v", step, q, got, ok, want)
				}
			}
			n := 0
			x.each(func(it *Item) bool {
				if model[it.Path] != it {
					t.Fatalf("step %d: each gave %s, not in the model", step, it.Path)
				}
				n++
				return true
			})
			if n != len(model) {
				t.Fatalf("step %d: each gave %d entries; want %d", step, n, len(model))
			}
			if tab := x.tab.Load(); 4*(x.live+x.tombs) > 3*len(tab.slots) {
				t.Fatalf("step %d: %d live + %d tombstones in %d slots", step, x.live, x.tombs, len(tab.slots))
			}
		}
	}
	if _, ok := x.load("/nowhere"); ok {
		t.Fatal("load of a path never stored: found")
	}
	// Emptied, the table shrinks.
	for p := range model {
		x.delete(p)
	}
	for i := range 20 {
		x.store(&Item{Path: fmt.Sprint("/again", i)})
	}
	if n := len(x.tab.Load().slots); n > 128 {
		t.Errorf("20 entries after emptying: %d slots", n)
	}
	for i := range 20 {
		if _, ok := x.load(fmt.Sprint("/again", i)); !ok {
			t.Fatalf("/again%d lost", i)
		}
	}
}

// Readers never miss a path that stays stored while a writer adds,
// replaces and removes others, and grows the table (run with -race).
func TestIndexConcurrentReaders(t *testing.T) {
	x := newIndex()
	stable := make([]*Item, 100)
	for i := range stable {
		stable[i] = &Item{Path: fmt.Sprintf("/stable/%d", i)}
		x.store(stable[i])
	}
	var stop atomic.Bool
	var misses atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				for _, it := range stable {
					if got, ok := x.load(it.Path); !ok || got != it {
						misses.Add(1)
					}
				}
			}
		}()
	}
	for i := range 50_000 { // the writer: one at a time, as under Store.mu
		p := fmt.Sprintf("/churn/%d", i%5000)
		if i%3 == 2 {
			x.delete(p)
		} else {
			x.store(&Item{Path: p})
		}
	}
	stop.Store(true)
	wg.Wait()
	if n := misses.Load(); n > 0 {
		t.Fatalf("readers missed a stored path %d times", n)
	}
}

// The index grows by doubling: filled to just over 3/4 it goes to just over
// 3/8, so that an entry costs 11 to 21 bytes of slots, never the 43 a
// quadrupled table cost (a third of a million items took 8 MB of slots
// where 4 MB hold them).
func TestIndexLoadAfterGrowing(t *testing.T) {
	x := newIndex()
	for i := range 100_000 {
		x.store(&Item{Path: fmt.Sprint("/f", i)})
		if n := len(x.tab.Load().slots); i >= 6 && 8*x.live < 3*n {
			t.Fatalf("%d entries in %d slots: a load under 3/8", x.live, n)
		}
	}
}
