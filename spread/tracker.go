// Package spread is the content director's answer to skewed traffic,
// without Caddy: it estimates each path's share of the requests the
// director sees (a decaying count-min sketch), keeps the paths whose share
// is large enough to unbalance the members (the spread set), says how many
// members each of them needs, and picks one of a spread path's members by
// power of two choices.
//
// The director (the root package) feeds it every request (Tracker.Observe)
// and turns its answers into routes and announcements to the members; the
// simulation in this package's tests drives the same code with generated
// requests.
package spread

import (
	"hash/maphash"
	"math"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
)

// Config tunes a Tracker. Zero values mean the defaults.
type Config struct {
	// Div: a path is spread once its share of the requests is at least a
	// Div-th of a member's fair share, 1/(Div·N) for N members, and cools
	// down (back to its owner alone) below half of that. Default 64: below
	// that the paths left to their owners alone are many and small, so
	// each member's part of them is close to the mean, and the spread
	// paths fill in the difference (see the simulation: at 32 the busiest
	// of 50 members stays 10-14% over the mean).
	Div float64
	// Load: a spread path gets ceil(Load·share·N) members (at least 2, at
	// most N): on average none of them takes more than 1/Load of a fair
	// share from it, which leaves the choice between members room to even
	// the load out. Default 16.
	Load float64
	// Window: the counts are halved every Window requests, so the estimate
	// follows the traffic of the last few windows. Default 1<<18.
	Window uint64
	// MinCount: a path is not spread before it was counted this often
	// (decayed). Default 16: a handful of requests proves nothing.
	MinCount uint32
	// MinTotal: nothing is spread while the estimate rests on fewer
	// requests than this (decayed). Default 16384: shares measured over a
	// trickle of requests (a test, a quiet site) are noise, and a quiet
	// site needs no spreading.
	MinTotal uint64
	// MaxPaths bounds the spread set. Default 4096.
	MaxPaths int
	// OnChange, if set, is called (without locks held, on the goroutine of
	// the request that caused it) when a path joins or leaves the spread
	// set or its width changes. It must not block.
	OnChange func()
}

func (c *Config) defaults() {
	if c.Div <= 0 {
		c.Div = 64
	}
	if c.Load <= 0 {
		c.Load = 16
	}
	if c.Window == 0 {
		c.Window = 1 << 18
	}
	if c.MinCount == 0 {
		c.MinCount = 16
	}
	if c.MinTotal == 0 {
		c.MinTotal = 16384
	}
	if c.MaxPaths <= 0 {
		c.MaxPaths = 4096
	}
}

// Sketch geometry: 4 rows of 64Ki 32-bit counters (1 MiB).
const (
	rows    = 4
	rowBits = 16
	rowLen  = 1 << rowBits
)

// Tracker estimates the share of each path in the requests it observes
// and keeps the spread set. Safe for concurrent use; Observe takes no lock
// and allocates nothing unless the spread set changes.
type Tracker struct {
	cfg  Config
	seed maphash.Seed

	counts [rows][]atomic.Uint32
	_      [64]byte
	// n counts every request (not decayed): the only word every request
	// writes besides its counters. The decayed total is base plus the
	// requests since the halving at mark.
	n    atomic.Uint64
	_    [56]byte
	base atomic.Uint64 // the decayed total at the last halving
	mark atomic.Uint64 // n at the last halving
	// halves counts the halvings so far.
	halves atomic.Uint64
	// members is the member count Observe was last given (for the sweep
	// of a halving).
	members atomic.Int32

	// hot is the spread set, replaced whole under mu (copy on write):
	// read without a lock on every request.
	hot atomic.Pointer[map[string]*Path]
	mu  sync.Mutex
}

// Path is one path of the spread set. Its width is the Tracker's; its
// route is the caller's (the members that may serve it now).
type Path struct {
	Name  string
	width atomic.Int32
	count atomic.Uint64 // last estimate, for Share
	total atomic.Uint64

	route atomic.Pointer[[]string]
	// Requests counts the requests routed through the spread set (the
	// caller's to add to).
	Requests atomic.Int64
}

// Width is how many members the path should be served by.
func (p *Path) Width() int { return int(p.width.Load()) }

// Share is the path's share of the requests at its last estimate.
func (p *Path) Share() float64 {
	t := p.total.Load()
	if t == 0 {
		return 0
	}
	return float64(p.count.Load()) / float64(t)
}

// Route returns the members that may serve the path now, as the caller
// last set them (nil before).
func (p *Path) Route() []string {
	if r := p.route.Load(); r != nil {
		return *r
	}
	return nil
}

// SetRoute sets the members that may serve the path now (the owner first).
// r must not be modified afterwards.
func (p *Path) SetRoute(r []string) { p.route.Store(&r) }

// New returns a Tracker.
func New(cfg Config) *Tracker {
	cfg.defaults()
	t := &Tracker{cfg: cfg, seed: maphash.MakeSeed()}
	for i := range t.counts {
		t.counts[i] = make([]atomic.Uint32, rowLen)
	}
	empty := map[string]*Path{}
	t.hot.Store(&empty)
	return t
}

// slot returns the counter of row i for hash x: 16 bits of x per row.
func slot(x uint64, i int) uint64 { return (x >> (16 * i)) & (rowLen - 1) }

// Observe counts one request for path, when members members serve the
// site, and returns the path's entry if it is spread (nil otherwise).
func (t *Tracker) Observe(path string, members int) *Path {
	x := maphash.String(t.seed, path)
	est := uint32(math.MaxUint32)
	for i := range rows {
		est = min(est, t.counts[i][slot(x, i)].Add(1))
	}
	n := t.n.Add(1)
	mark := t.mark.Load()
	total := t.base.Load() + n - mark
	if n-mark == t.cfg.Window {
		t.halve(n)
	}
	if int(t.members.Load()) != members {
		t.members.Store(int32(members))
	}
	p := (*t.hot.Load())[path]
	if members < 2 {
		return p
	}
	if p != nil {
		// Widen at once when the share grew; narrowing waits for the
		// next halving (hysteresis).
		if w := t.width(est, total, members); w > p.Width() {
			p.count.Store(uint64(est))
			p.total.Store(total)
			p.width.Store(int32(w))
			t.changed()
		}
		return p
	}
	if est < t.cfg.MinCount || total < t.cfg.MinTotal || float64(est)*t.cfg.Div*float64(members) < float64(total) {
		return nil
	}
	return t.promote(path, est, total, members)
}

// width is how many members a path counted est times in total needs.
func (t *Tracker) width(est uint32, total uint64, members int) int {
	w := int(math.Ceil(t.cfg.Load * float64(est) * float64(members) / float64(total)))
	return min(max(w, 2), members)
}

// promote adds path to the spread set.
func (t *Tracker) promote(path string, est uint32, total uint64, members int) *Path {
	t.mu.Lock()
	old := *t.hot.Load()
	if p := old[path]; p != nil {
		t.mu.Unlock()
		return p
	}
	if len(old) >= t.cfg.MaxPaths {
		t.mu.Unlock()
		return nil
	}
	p := &Path{Name: path}
	p.count.Store(uint64(est))
	p.total.Store(total)
	p.width.Store(int32(t.width(est, total, members)))
	hot := make(map[string]*Path, len(old)+1)
	for k, v := range old {
		hot[k] = v
	}
	hot[path] = p
	t.hot.Store(&hot)
	t.mu.Unlock()
	t.changed()
	return p
}

// estimate returns path's count without counting it.
func (t *Tracker) estimate(path string) uint32 {
	x := maphash.String(t.seed, path)
	est := uint32(math.MaxUint32)
	for i := range rows {
		est = min(est, t.counts[i][slot(x, i)].Load())
	}
	return est
}

// halve halves every count (the past fades), then re-estimates the spread
// paths: those that cooled below half the threshold leave the set, the
// others get the width their share needs now.
func (t *Tracker) halve(n uint64) {
	t.base.Store((t.base.Load() + n - t.mark.Load()) / 2)
	t.mark.Store(n)
	t.halves.Add(1)
	for i := range t.counts {
		for j := range t.counts[i] {
			c := &t.counts[i][j]
			if v := c.Load(); v != 0 {
				c.Store(v >> 1)
			}
		}
	}
	t.Sweep(0)
}

// Sweep re-estimates the spread paths (as a halving does): those whose
// share fell below half the spreading threshold for members members (0:
// the number Observe was last given) leave the set; the others are
// narrowed to the width their share needs now.
func (t *Tracker) Sweep(members int) {
	total := t.base.Load() + t.n.Load() - t.mark.Load()
	changed := false
	t.mu.Lock()
	old := *t.hot.Load()
	n := members
	if n == 0 {
		n = max(int(t.members.Load()), 2)
	}
	var drop []string
	for name, p := range old {
		est := t.estimate(name)
		p.count.Store(uint64(est))
		p.total.Store(total)
		if total == 0 || float64(est)*2*t.cfg.Div*float64(n) < float64(total) {
			drop = append(drop, name)
			continue
		}
		if w := t.width(est, total, n); w < p.Width() {
			p.width.Store(int32(w))
			changed = true
		}
	}
	if len(drop) > 0 {
		hot := make(map[string]*Path, len(old))
		for k, v := range old {
			if !slices.Contains(drop, k) {
				hot[k] = v
			}
		}
		t.hot.Store(&hot)
		changed = true
	}
	t.mu.Unlock()
	if changed {
		t.changed()
	}
}

func (t *Tracker) changed() {
	if f := t.cfg.OnChange; f != nil {
		f()
	}
}

// Lookup returns path's entry if it is spread.
func (t *Tracker) Lookup(path string) *Path { return (*t.hot.Load())[path] }

// Paths lists the spread set, the largest share first.
func (t *Tracker) Paths() []*Path {
	hot := *t.hot.Load()
	out := make([]*Path, 0, len(hot))
	for _, p := range hot {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if a, b := out[i].Share(), out[j].Share(); a != b {
			return a > b
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Halvings is the number of times the counts were halved.
func (t *Tracker) Halvings() uint64 { return t.halves.Load() }

// Two returns two distinct indices below n (n ≥ 2) from the random bits
// r, for a power-of-two-choices pick; for n == 1 both are 0.
func Two(n int, r uint64) (a, b int) {
	if n < 2 {
		return 0, 0
	}
	a = int((r & 0xffffffff) * uint64(n) >> 32)
	b = int((r >> 32) * uint64(n-1) >> 32)
	if b >= a {
		b++
	}
	return a, b
}

// Prefer reports whether candidate a of a power-of-two-choices pick is to
// be preferred over b: fewer requests in flight, unless they differ by one
// at most, then fewer requests sent to it recently. A difference of one is
// mostly the timing of the requests just sent: taken as a tie, it lets the
// counts decide, which evens the load out better on a lightly loaded
// cluster (and in the simulation).
func Prefer(inflightA, inflightB, recentA, recentB int64) bool {
	if d := inflightA - inflightB; d > 1 || d < -1 {
		return d < 0
	}
	return recentA <= recentB
}
