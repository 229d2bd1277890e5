package spread

// The simulation of the targets: the director's policies driven
// with generated requests, members simulated as counters with a hot cache
// each. The real code: the Tracker, Two and Prefer of this package, and
// the ring of package peering. What the director's glue does around them
// (announce a path's set, route to the members that confirmed they hold
// it) is modelled in simDirector, with a delay for the confirmations.
//
//	go test -run TestSimulation -v ./spread/        # 10k paths: today's policy and spreading
//	SHARDCACHE_SIM=full go test -run TestSimulation -v -timeout 60m ./spread/
//
// The full run is the table: Zipf s = 1.1 and 0.9 over 10,000 and
// 1,000,000 paths, 10 and 50 members, 10M requests, for today's policy
// (each path to its owner), uri_hash, round_robin and spreading.

import (
	"container/list"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/shardcache/caddy-shardcache/peering"
)

// simWorkload is one row of the table.
type simWorkload struct {
	s        float64
	paths    int
	members  int
	requests int
}

// simResult is what a policy did with a workload.
type simResult struct {
	busiest  float64 // busiest member's requests ÷ the mean
	san      float64 // bytes that crossed the SAN ÷ bytes served
	spread   int     // paths spread at the end
	pushed   int64   // copies pushed
	requests int64
}

// zipfAlias samples ranks 0..n-1 with P(k) ∝ 1/(k+1)^s in O(1) (Vose's
// alias method): math/rand's Zipf needs s > 1.
type zipfAlias struct {
	prob  []float64
	alias []int32
}

func newZipf(n int, s float64) *zipfAlias {
	w := make([]float64, n)
	sum := 0.0
	for k := range w {
		w[k] = math.Pow(float64(k+1), -s)
		sum += w[k]
	}
	z := &zipfAlias{prob: make([]float64, n), alias: make([]int32, n)}
	small, large := make([]int32, 0, n), make([]int32, 0, n)
	for k := range w {
		w[k] *= float64(n) / sum
		if w[k] < 1 {
			small = append(small, int32(k))
		} else {
			large = append(large, int32(k))
		}
	}
	for len(small) > 0 && len(large) > 0 {
		l, g := small[len(small)-1], large[len(large)-1]
		small = small[:len(small)-1]
		z.prob[l], z.alias[l] = w[l], g
		w[g] += w[l] - 1
		if w[g] < 1 {
			large = large[:len(large)-1]
			small = append(small, g)
		}
	}
	for _, k := range large {
		z.prob[k] = 1
	}
	for _, k := range small {
		z.prob[k] = 1
	}
	return z
}

func (z *zipfAlias) next(r *rand.Rand) int {
	k := r.IntN(len(z.prob))
	if r.Float64() < z.prob[k] {
		return k
	}
	return int(z.alias[k])
}

// simSite is the paths of a workload, their sizes and owners.
type simSite struct {
	names  []string
	sizes  []int64
	owner  []int32
	ring   *peering.Ring
	member map[string]int32
}

func newSimSite(paths, members int, r *rand.Rand) *simSite {
	var names []string
	m := map[string]int32{}
	for i := range members {
		name := fmt.Sprintf("m%02d", i)
		names = append(names, name)
		m[name] = int32(i)
	}
	st := &simSite{names: make([]string, paths), sizes: make([]int64, paths), owner: make([]int32, paths),
		ring: peering.NewRing(0, nil, names...), member: m}
	perm := r.Perm(paths) // rank → path: popularity unrelated to names
	for rank, i := range perm {
		p := fmt.Sprintf("/d%03d/item-%07d.bin", i%1000, i)
		st.names[rank] = p
		st.sizes[rank] = 1024 + r.Int64N(63*1024) // 1-64 KiB
		st.owner[rank] = m[st.ring.Owner(p)]
	}
	return st
}

// hotSim is a member's hot cache: LRU within a byte budget, a copy
// admitted on its second request (a doorkeeper of requested paths reset
// now and then, as TinyLFU's), or at once when pushed.
type hotSim struct {
	budget, bytes int64
	ll            *list.List
	items         map[int32]*list.Element
	seen          map[int32]bool
}

type hotSimEntry struct {
	id   int32
	size int64
}

func newHotSim(budget int64) *hotSim {
	return &hotSim{budget: budget, ll: list.New(), items: map[int32]*list.Element{}, seen: map[int32]bool{}}
}

func (h *hotSim) has(id int32) bool {
	el, ok := h.items[id]
	if ok {
		h.ll.MoveToFront(el)
	}
	return ok
}

// contains is has without touching the LRU order.
func (h *hotSim) contains(id int32) bool { _, ok := h.items[id]; return ok }

// miss records a request that missed: the fetched copy is admitted if the
// path was requested before.
func (h *hotSim) miss(id int32, size int64) {
	if !h.seen[id] {
		if len(h.seen) > 1<<16 {
			clear(h.seen)
		}
		h.seen[id] = true
		return
	}
	h.put(id, size)
}

func (h *hotSim) put(id int32, size int64) {
	if size > h.budget || h.contains(id) {
		return
	}
	for h.bytes+size > h.budget {
		e := h.ll.Remove(h.ll.Back()).(hotSimEntry)
		delete(h.items, e.id)
		h.bytes -= e.size
	}
	h.items[id] = h.ll.PushFront(hotSimEntry{id, size})
	h.bytes += size
}

// simCluster is the members: requests and bytes served, bytes over the
// SAN, and the requests in flight (the last window requests, each taking
// the same time).
type simCluster struct {
	site      *simSite
	requests  []int64
	hot       []*hotSim
	served    int64
	san       int64
	window    []int32
	wi        int
	inflight  []int64
	recent    []int64
	recentAge int
}

func newSimCluster(site *simSite, members int, hotBudget int64) *simCluster {
	c := &simCluster{site: site, requests: make([]int64, members), hot: make([]*hotSim, members),
		window: make([]int32, 16*members), inflight: make([]int64, members), recent: make([]int64, members)}
	for i := range c.hot {
		c.hot[i] = newHotSim(hotBudget)
	}
	for i := range c.window {
		c.window[i] = -1
	}
	return c
}

// serve counts request id on member m: a local hit if m owns it or holds a
// copy, else a fetch from the owner over the SAN (which the hot cache may
// keep).
func (c *simCluster) serve(id int32, m int32) {
	size := c.site.sizes[id]
	c.requests[m]++
	c.served += size
	if old := c.window[c.wi]; old >= 0 {
		c.inflight[old]--
	}
	c.window[c.wi] = m
	c.inflight[m]++
	c.wi = (c.wi + 1) % len(c.window)
	c.recent[m]++
	if c.recentAge++; c.recentAge == 1<<16 {
		c.recentAge = 0
		for i := range c.recent {
			c.recent[i] /= 2
		}
	}
	if c.site.owner[id] == m || c.hot[m].has(id) {
		return
	}
	c.san += size
	c.hot[m].miss(id, size)
}

func (c *simCluster) result() simResult {
	var sum, top int64
	for _, n := range c.requests {
		sum += n
		top = max(top, n)
	}
	return simResult{busiest: float64(top) * float64(len(c.requests)) / float64(sum),
		san: float64(c.san) / float64(c.served), requests: sum}
}

// simDirector is the director's glue around the Tracker: it announces each
// spread path's set (the owner and the next members on the ring, as many
// as its width), has the owner's bytes pushed into the new members' hot
// caches, and routes to a member only once its confirmation arrived (lag
// requests later; the director's loop also runs every lag requests).
type simDirector struct {
	t       *Tracker
	c       *simCluster
	members int
	lag     int
	dirty   bool
	next    int // request index of the next loop run
	ids     map[string]int32
	pushed  int64
	pending []simPending
	sets    map[string][]int32 // announced sets, owner first
}

type simPending struct {
	at     int
	path   string
	member int32
}

func (d *simDirector) loop(now int) {
	for len(d.pending) > 0 && d.pending[0].at <= now {
		pd := d.pending[0]
		d.pending = d.pending[1:]
		if p := d.t.Lookup(pd.path); p != nil && d.c.hot[pd.member].contains(d.ids[pd.path]) {
			r := p.Route()
			if !containsName(r, d.c.site.memberName(pd.member)) {
				p.SetRoute(append(append([]string(nil), r...), d.c.site.memberName(pd.member)))
			}
		}
	}
	if !d.dirty || now < d.next {
		return
	}
	d.dirty, d.next = false, now+d.lag
	live := map[string]bool{}
	for _, p := range d.t.Paths() {
		live[p.Name] = true
		id := d.ids[p.Name]
		want := d.c.site.ring.Owners(p.Name, p.Width())
		set := make([]int32, len(want))
		for i, name := range want {
			set[i] = d.c.site.member[name]
		}
		old := d.sets[p.Name]
		d.sets[p.Name] = set
		route := []string{want[0]}
		for _, m := range set[1:] {
			if containsMember(old, m) && d.c.hot[m].contains(id) {
				route = append(route, d.c.site.memberName(m))
				continue
			}
			if !d.c.hot[m].contains(id) {
				d.c.san += d.c.site.sizes[id]
				d.pushed++
				d.c.hot[m].put(id, d.c.site.sizes[id])
			}
			d.pending = append(d.pending, simPending{now + d.lag, p.Name, m})
		}
		p.SetRoute(route)
	}
	for name := range d.sets {
		if !live[name] {
			delete(d.sets, name) // copies age out of the hot caches
		}
	}
}

// memberName is member m's name on the ring.
func (s *simSite) memberName(m int32) string { return fmt.Sprintf("m%02d", m) }

func containsName(r []string, n string) bool {
	for _, x := range r {
		if x == n {
			return true
		}
	}
	return false
}

func containsMember(set []int32, m int32) bool {
	for _, x := range set {
		if x == m {
			return true
		}
	}
	return false
}

// simRun runs one policy over one workload.
func simRun(w simWorkload, policy string, site *simSite, z *zipfAlias, seed uint64) simResult {
	r := rand.New(rand.NewPCG(seed, 7))
	c := newSimCluster(site, w.members, 64<<20)
	var d *simDirector
	if policy == "spread" {
		d = &simDirector{c: c, members: w.members, lag: 2000, ids: map[string]int32{}, sets: map[string][]int32{}}
		for i, n := range site.names {
			d.ids[n] = int32(i)
		}
		d.t = New(Config{OnChange: func() { d.dirty = true }})
	}
	for i := range w.requests {
		id := int32(z.next(r))
		var m int32
		switch policy {
		case "owner":
			m = site.owner[id]
		case "uri_hash":
			m = int32(mix(uint64(id)*0x9e3779b97f4a7c15) % uint64(w.members))
		case "round_robin":
			m = int32(i % w.members)
		case "spread":
			d.loop(i)
			m = site.owner[id]
			if p := d.t.Observe(site.names[id], w.members); p != nil {
				if route := p.Route(); len(route) > 1 {
					a, b := Two(len(route), r.Uint64())
					ma, mb := site.member[route[a]], site.member[route[b]]
					m = mb
					if Prefer(c.inflight[ma], c.inflight[mb], c.recent[ma], c.recent[mb]) {
						m = ma
					}
					p.Requests.Add(1)
				}
			}
		}
		c.serve(id, m)
	}
	res := c.result()
	if d != nil {
		res.spread, res.pushed = len(d.t.Paths()), d.pushed
	}
	return res
}

func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// TestSimulation runs the table and checks the targets for spreading:
// busiest member ≤ 1.10 × the mean, SAN bytes ≤ 5% of the bytes served.
func TestSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("simulation: not in -short")
	}
	full := os.Getenv("SHARDCACHE_SIM") == "full"
	var ws []simWorkload
	for _, s := range []float64{1.1, 0.9} {
		for _, paths := range []int{10_000, 1_000_000} {
			for _, members := range []int{10, 50} {
				if full || paths == 10_000 {
					ws = append(ws, simWorkload{s, paths, members, 10_000_000})
				}
			}
		}
	}
	policies := []string{"owner", "uri_hash", "round_robin", "spread"}
	if !full {
		// The quick run: the 10,000-path rows, today's policy and
		// spreading only (the others' hot caches take most of the time).
		policies = []string{"owner", "spread"}
	}
	if raceEnabled && !full {
		// Under the race detector, one row of 1M requests.
		ws = []simWorkload{{1.1, 10_000, 10, 1_000_000}}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nbusiest member ÷ mean, bytes over the SAN ÷ bytes served, per policy\n")
	for _, w := range ws {
		r := rand.New(rand.NewPCG(uint64(w.paths), uint64(w.members)))
		site := newSimSite(w.paths, w.members, r)
		z := newZipf(w.paths, w.s)
		fmt.Fprintf(&b, "s=%.1f paths=%d members=%d requests=%d:", w.s, w.paths, w.members, w.requests)
		for _, p := range policies {
			res := simRun(w, p, site, z, 1)
			fmt.Fprintf(&b, "  %s %.3f %.2f%%", p, res.busiest, 100*res.san)
			if p != "spread" {
				continue
			}
			fmt.Fprintf(&b, " (%d paths spread, %d copies pushed)", res.spread, res.pushed)
			if res.busiest > 1.10 {
				t.Errorf("s=%.1f paths=%d members=%d: spreading leaves the busiest member at %.3f × the mean; want ≤ 1.10",
					w.s, w.paths, w.members, res.busiest)
			}
			if res.san > 0.05 {
				t.Errorf("s=%.1f paths=%d members=%d: spreading moves %.2f%% of the bytes served over the SAN; want ≤ 5%%",
					w.s, w.paths, w.members, 100*res.san)
			}
		}
		b.WriteString("\n")
	}
	t.Log(b.String())
}
