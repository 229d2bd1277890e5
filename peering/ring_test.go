package peering

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
)

// TestRingInjectedHash is groupcache's consistenthash test: with a hash that
// reads the digits, points are exactly where the test says.
func TestRingInjectedHash(t *testing.T) {
	hash := func(b []byte) uint64 {
		i, err := strconv.Atoi(strings.Replace(string(b), "#", "", 1))
		if err != nil {
			panic(err)
		}
		return uint64(i)
	}
	// Nodes 2, 4, 6 with 3 replicas: points 2, 4, 6, 12, 14, 16, 22, 24, 26.
	r := NewRing(3, hash, "6", "4", "2")
	cases := map[string]string{"2": "2", "11": "2", "23": "4", "27": "2"}
	for k, want := range cases {
		if got := r.Owner(k); got != want {
			t.Errorf("Owner(%s) = %s, want %s", k, got, want)
		}
	}
	// Adding 8 gives it 8, 18, 28: 27 now belongs to 8.
	r = NewRing(3, hash, "6", "4", "2", "8")
	cases["27"] = "8"
	for k, want := range cases {
		if got := r.Owner(k); got != want {
			t.Errorf("after adding 8: Owner(%s) = %s, want %s", k, got, want)
		}
	}
	if got := r.Owners("27", 3); fmt.Sprint(got) != "[8 2 4]" {
		t.Errorf("Owners(27, 3) = %v, want [8 2 4]", got)
	}
}

func paths(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("/dir%d/file%d.html", i/100, i)
	}
	return out
}

func TestRingDistribution(t *testing.T) {
	keys := paths(10000)
	for _, nodes := range [][]string{{"n1", "n2", "n3"}, {"a", "b", "c"}, {"cache-1.example", "cache-2.example", "cache-3.example"}} {
		r := NewRing(0, nil, nodes...)
		count := map[string]int{}
		for _, k := range keys {
			count[r.Owner(k)]++
		}
		for _, n := range nodes {
			share := float64(count[n]) / float64(len(keys))
			if math.Abs(share-1.0/3) > 0.05 {
				t.Errorf("%v: %s owns %.1f%% of keys, want 33%% ± 5%%", nodes, n, 100*share)
			}
		}
		t.Logf("%v: %v", nodes, count)
	}
}

// TestRingStability: adding a 4th node moves about a quarter of the keys,
// all of them to the new node.
func TestRingStability(t *testing.T) {
	keys := paths(10000)
	r3 := NewRing(0, nil, "n1", "n2", "n3")
	r4 := NewRing(0, nil, "n1", "n2", "n3", "n4")
	moved := 0
	for _, k := range keys {
		a, b := r3.Owner(k), r4.Owner(k)
		if a != b {
			moved++
			if b != "n4" {
				t.Fatalf("%s moved from %s to %s, not to the new node", k, a, b)
			}
		}
	}
	frac := float64(moved) / float64(len(keys))
	if frac < 0.18 || frac > 0.32 {
		t.Errorf("adding a 4th node moved %.1f%% of keys, want about 25%%", 100*frac)
	}
	// Member order does not matter.
	r3b := NewRing(0, nil, "n3", "n1", "n2")
	for _, k := range keys {
		if r3b.Owner(k) != r3.Owner(k) {
			t.Fatal("ring depends on member order")
		}
	}
}

func TestRingOwners(t *testing.T) {
	r := NewRing(0, nil, "n1", "n2", "n3")
	for _, k := range paths(1000) {
		o := r.Owners(k, 3)
		if len(o) != 3 || o[0] != r.Owner(k) || o[0] == o[1] || o[1] == o[2] || o[0] == o[2] {
			t.Fatalf("Owners(%s, 3) = %v (owner %s)", k, o, r.Owner(k))
		}
		if o5 := r.Owners(k, 5); fmt.Sprint(o5) != fmt.Sprint(o) {
			t.Fatalf("Owners(%s, 5) = %v, want %v", k, o5, o)
		}
		if o1 := r.Owners(k, 1); len(o1) != 1 || o1[0] != o[0] {
			t.Fatalf("Owners(%s, 1) = %v", k, o1)
		}
	}
	// More than 64 nodes takes the slow path for distinctness.
	var many []string
	for i := range 70 {
		many = append(many, fmt.Sprintf("node%d", i))
	}
	big := NewRing(8, nil, many...)
	o := big.Owners("/x", 70)
	seen := map[string]bool{}
	for _, n := range o {
		if seen[n] {
			t.Fatalf("duplicate %s in %v", n, o)
		}
		seen[n] = true
	}
	if len(o) != 70 {
		t.Fatalf("Owners(70) returned %d nodes", len(o))
	}

	empty := NewRing(0, nil)
	if empty.Owner("/x") != "" || empty.Owners("/x", 2) != nil {
		t.Error("empty ring owns keys")
	}
}

func TestRingEpoch(t *testing.T) {
	a := NewRing(0, nil, "n1", "n2", "n3")
	b := NewRing(0, nil, "n3", "n1", "n2", "n2", "")
	if a.Epoch() != b.Epoch() || a.Epoch() == 0 {
		t.Errorf("same members, epochs %x and %x", a.Epoch(), b.Epoch())
	}
	if fmt.Sprint(b.Nodes()) != "[n1 n2 n3]" || !b.Has("n2") || b.Has("n4") || b.Len() != 3 {
		t.Errorf("Nodes() = %v", b.Nodes())
	}
	for _, other := range []*Ring{
		NewRing(0, nil, "n1", "n2"),
		NewRing(0, nil, "n1", "n2", "n4"),
		NewRing(100, nil, "n1", "n2", "n3"),
		NewRing(0, nil, "n1n2", "n3"),
	} {
		if other.Epoch() == a.Epoch() {
			t.Errorf("%v: same epoch as %v", other.Nodes(), a.Nodes())
		}
	}
}

func BenchmarkRingOwner(b *testing.B) {
	r := NewRing(0, nil, "n1", "n2", "n3", "n4", "n5")
	keys := paths(1024)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r.Owner(keys[i%len(keys)])
	}
}
