package peering

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// memBackend is an in-memory Backend.
type memBackend struct {
	mu    sync.Mutex
	items map[string]map[string]memItem // group → path → item
	ready atomic.Bool

	gets     atomic.Int64
	block    chan struct{} // if set, Get waits for it or the context
	canceled atomic.Int64  // Gets that saw their context end

	overshoot atomic.Bool // answer a range with the rest of the body
}

type memItem struct {
	meta Meta
	body []byte
}

func newMemBackend() *memBackend {
	b := &memBackend{items: map[string]map[string]memItem{}}
	b.ready.Store(true)
	return b
}

func (b *memBackend) put(group string, m Meta, body []byte) Meta {
	m.Size = int64(len(body))
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.items[group] == nil {
		b.items[group] = map[string]memItem{}
	}
	b.items[group][m.Path] = memItem{m, body}
	return m
}

func (b *memBackend) Get(ctx context.Context, req Request) (Meta, []byte, error) {
	b.gets.Add(1)
	if b.block != nil {
		select {
		case <-b.block:
		case <-ctx.Done():
			b.canceled.Add(1)
			return Meta{}, nil, ErrCanceled
		}
	}
	b.mu.Lock()
	it, ok := b.items[req.Group][req.Path]
	b.mu.Unlock()
	if !ok || (req.Version != "" && req.Version != it.meta.Version) {
		return Meta{}, nil, ErrNotFound
	}
	m := it.meta
	m.Variants = nil
	if req.Length > 0 {
		if req.Offset > int64(len(it.body)) {
			return Meta{}, nil, ErrBadRequest
		}
		end := min(int64(len(it.body)), req.Offset+req.Length)
		if b.overshoot.Load() {
			end = int64(len(it.body)) // a broken server: sends more than asked
		}
		return m, it.body[req.Offset:end], nil
	}
	return m, it.body, nil
}

func (b *memBackend) TOC(w *TOCWriter) error {
	b.mu.Lock()
	groups := map[string][]Meta{}
	for g, items := range b.items {
		for _, it := range items {
			groups[g] = append(groups[g], it.meta)
		}
	}
	b.mu.Unlock()
	for g, items := range groups {
		ok, err := w.Group(g, len(items), true)
		if err != nil {
			return err
		}
		for i := range items {
			if !ok {
				break
			}
			if err := w.Item(&items[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *memBackend) Ready() bool { return b.ready.Load() }

// recorder collects Events.
type recorder struct {
	mu     sync.Mutex
	events []recEvent
	notify chan struct{}
	// toc holds, per peer, the items of its snapshot being received.
	toc map[string][]GroupTOC
}

// recEvent is an Event as recorded: an EventSnapshot carries the items the
// peer's EventTOC events listed since its EventUp, per group.
type recEvent struct {
	Event
	Snapshot []GroupTOC
}

func newRecorder() *recorder {
	return &recorder{notify: make(chan struct{}, 1), toc: map[string][]GroupTOC{}}
}

func (r *recorder) on(e Event) {
	r.mu.Lock()
	re := recEvent{Event: e}
	switch e.Kind {
	case EventUp:
		delete(r.toc, e.Peer)
	case EventSync:
		if !e.Sync.End && e.Sync.Mode == SyncSnapshot {
			r.toc[e.Peer] = append(r.toc[e.Peer], GroupTOC{Group: e.Sync.Group})
		}
	case EventTOC:
		gs := r.toc[e.Peer]
		for i := range gs {
			if gs[i].Group == e.Delta.Group {
				gs[i].Items = append(gs[i].Items, e.Delta.Upserts...)
			}
		}
	case EventSnapshot:
		re.Snapshot = r.toc[e.Peer]
		delete(r.toc, e.Peer)
	}
	r.events = append(r.events, re)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// wait returns the first event at or after index *from that matches, and
// advances *from past it.
func (r *recorder) wait(t *testing.T, from *int, timeout time.Duration, match func(Event) bool) recEvent {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		for i := *from; i < len(r.events); i++ {
			if match(r.events[i].Event) {
				*from = i + 1
				e := r.events[i]
				r.mu.Unlock()
				return e
			}
		}
		r.mu.Unlock()
		select {
		case <-r.notify:
		case <-deadline:
			t.Fatalf("no matching event within %v", timeout)
		}
	}
}

func (r *recorder) count(match func(Event) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if match(e.Event) {
			n++
		}
	}
	return n
}

func kind(k EventKind, peer string) func(Event) bool {
	return func(e Event) bool { return e.Kind == k && e.Peer == peer }
}

type testNode struct {
	*Node
	backend *memBackend
	rec     *recorder
	addr    string
}

func credsFor(t testing.TB, secret, name string) *Credentials {
	t.Helper()
	c, err := CredentialsFromSecret(secret, name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func bindLoopback(t testing.TB) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

func testLogger(t testing.TB) *zap.Logger {
	if tt, ok := t.(*testing.T); ok && testing.Verbose() {
		return zaptest.NewLogger(tt)
	}
	return zap.NewNop()
}

// startCluster starts one node per name, each listing all the others.
func startCluster(t testing.TB, names []string, tweak func(i int, c *Config)) []*testNode {
	t.Helper()
	pcs := make([]net.PacketConn, len(names))
	var peers []Peer
	for i, n := range names {
		pcs[i] = bindLoopback(t)
		peers = append(peers, Peer{Name: n, Addr: pcs[i].LocalAddr().String()})
	}
	nodes := make([]*testNode, len(names))
	for i, name := range names {
		tn := &testNode{backend: newMemBackend(), rec: newRecorder(), addr: peers[i].Addr}
		cfg := Config{
			Name:       name,
			PacketConn: pcs[i],
			Peers:      peers,
			TLS:        credsFor(t, testSecret, name),
			Backend:    tn.backend,
			OnEvent:    tn.rec.on,
			Logger:     testLogger(t).Named(name),
		}
		if tweak != nil {
			tweak(i, &cfg)
		}
		n, err := Listen(cfg)
		if err != nil {
			t.Fatal(err)
		}
		tn.Node = n
		t.Cleanup(func() { n.Close() })
		nodes[i] = tn
	}
	return nodes
}

// waitUp waits until every node sees every other node up.
func waitUp(t testing.TB, nodes []*testNode) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, n := range nodes {
		for {
			up := 0
			for _, p := range n.Peers() {
				if p.Up {
					up++
				}
			}
			if up == len(n.Peers()) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: peers %+v not up", n.Name(), n.Peers())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func body(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestFetch(t *testing.T) {
	nodes := startCluster(t, []string{"n1", "n2"}, nil)
	a, b := nodes[0], nodes[1]
	mt := time.Unix(1700000000, 123456789)
	small := a.backend.put("site", Meta{Path: "/a.css", Version: "v1", ContentType: "text/css", ModTime: mt, ETag: `"v1"`}, body(1000, 1))
	big := a.backend.put("site", Meta{Path: "/big.bin", Version: "v2", ContentType: "application/octet-stream", ETag: `"v2"`}, body(chunkSize, 2))
	empty := b.backend.put("site", Meta{Path: "/empty", Version: "v3"}, []byte{})
	waitUp(t, nodes)
	ctx := context.Background()

	for _, tc := range []struct {
		from *testNode
		to   string
		want Meta
		body []byte
	}{
		{b, "n1", small, body(1000, 1)},
		{b, "n1", big, body(chunkSize, 2)},
		{a, "n2", empty, []byte{}},
	} {
		m, got, err := tc.from.Fetch(ctx, tc.to, Request{Group: "site", Path: tc.want.Path})
		if err != nil {
			t.Fatalf("Fetch %s: %v", tc.want.Path, err)
		}
		if !bytes.Equal(got, tc.body) {
			t.Fatalf("Fetch %s: %d bytes, not the body", tc.want.Path, len(got))
		}
		if !metaEqual(m, tc.want) {
			t.Errorf("Fetch %s: meta %+v, want %+v", tc.want.Path, m, tc.want)
		}
	}

	// Versioned: the current version is served, another is not found.
	if _, _, err := b.Fetch(ctx, "n1", Request{Group: "site", Path: "/a.css", Version: "v1", Epoch: 9}); err != nil {
		t.Errorf("current version: %v", err)
	}
	if _, _, err := b.Fetch(ctx, "n1", Request{Group: "site", Path: "/a.css", Version: "old"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("old version: %v, want ErrNotFound", err)
	}
	if _, _, err := b.Fetch(ctx, "n1", Request{Group: "other", Path: "/a.css"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown group: %v, want ErrNotFound", err)
	}
	if _, _, err := b.Fetch(ctx, "n9", Request{Group: "site", Path: "/a.css"}); err == nil {
		t.Error("fetch from an unknown peer succeeded")
	}
	// The connection is still healthy after errors.
	if _, _, err := b.Fetch(ctx, "n1", Request{Group: "site", Path: "/a.css"}); err != nil {
		t.Errorf("after errors: %v", err)
	}
}

func TestFetchTooLarge(t *testing.T) {
	nodes := startCluster(t, []string{"n1", "n2"}, func(i int, c *Config) { c.MaxBodySize = 1 << 20 })
	nodes[0].backend.put("g", Meta{Path: "/huge"}, body(2<<20, 0))
	nodes[0].backend.put("g", Meta{Path: "/ok"}, body(1<<20, 0))
	waitUp(t, nodes)
	if _, _, err := nodes[1].Fetch(context.Background(), "n1", Request{Group: "g", Path: "/huge"}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	if _, b, err := nodes[1].Fetch(context.Background(), "n1", Request{Group: "g", Path: "/ok"}); err != nil || len(b) != 1<<20 {
		t.Fatalf("at the limit: %d bytes, %v", len(b), err)
	}
}

// A range request moves the bytes of the range only; one past the end is
// short; a server that sends more than the range is refused.
func TestFetchRange(t *testing.T) {
	nodes := startCluster(t, []string{"n1", "n2"}, nil)
	full := body(3<<20+5, 7)
	nodes[0].backend.put("g", Meta{Path: "/big", Version: "v1"}, full)
	waitUp(t, nodes)
	ctx := context.Background()
	for _, r := range [][2]int64{{0, 1 << 20}, {1 << 20, 1 << 20}, {3 << 20, 1 << 20}, {5, 1}, {0, 3<<20 + 5}} {
		m, got, err := nodes[1].Fetch(ctx, "n1", Request{Group: "g", Path: "/big", Version: "v1", Offset: r[0], Length: r[1]})
		end := min(r[0]+r[1], int64(len(full)))
		if err != nil || !bytes.Equal(got, full[r[0]:end]) || m.Size != end-r[0] {
			t.Fatalf("range %d+%d: %d bytes (Size %d), %v; want %d bytes", r[0], r[1], len(got), m.Size, err, end-r[0])
		}
	}
	if _, _, err := nodes[1].Fetch(ctx, "n1", Request{Group: "g", Path: "/big", Offset: 4 << 20, Length: 1}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("range past the end: %v; want ErrBadRequest", err)
	}
	if _, _, err := nodes[1].Fetch(ctx, "n1", Request{Group: "g", Path: "/big", Offset: 5}); err == nil {
		t.Fatal("offset without length: no error")
	}
	nodes[0].backend.overshoot.Store(true)
	if _, _, err := nodes[1].Fetch(ctx, "n1", Request{Group: "g", Path: "/big", Offset: 0, Length: 10}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("server sent more than the range: %v; want ErrBadRequest", err)
	}
}

func TestFetchTimeout(t *testing.T) {
	nodes := startCluster(t, []string{"n1", "n2"}, func(i int, c *Config) { c.FetchTimeout = 300 * time.Millisecond })
	a, b := nodes[0], nodes[1]
	a.backend.block = make(chan struct{})
	a.backend.put("g", Meta{Path: "/slow"}, body(10, 0))
	waitUp(t, nodes)

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, _, err := b.Fetch(ctx, "n1", Request{Group: "g", Path: "/slow"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Errorf("Fetch returned after %v", d)
	}

	// No deadline on the context: Config.FetchTimeout applies.
	start = time.Now()
	_, _, err = b.Fetch(context.Background(), "n1", Request{Group: "g", Path: "/slow"})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > time.Second {
		t.Errorf("Fetch returned after %v, want about 300ms", d)
	}

	// An explicit cancel.
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, _, err = b.Fetch(ctx, "n1", Request{Group: "g", Path: "/slow"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}

	// The server saw each cancellation (STOP_SENDING ends the stream's
	// context) and its backend gave up.
	deadline := time.Now().Add(2 * time.Second)
	for a.backend.canceled.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("backend saw %d of 3 cancellations", a.backend.canceled.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(a.backend.block)
	if _, _, err := b.Fetch(context.Background(), "n1", Request{Group: "g", Path: "/slow"}); err != nil {
		t.Fatalf("after timeouts: %v", err)
	}
}

func TestConcurrentFetches(t *testing.T) {
	names := []string{"n1", "n2", "n3"}
	nodes := startCluster(t, names, nil)
	sizes := []int{0, 1, 1000, 20000, 100000}
	for i, n := range nodes {
		for j, s := range sizes {
			n.backend.put("g", Meta{Path: fmt.Sprintf("/%s/%d", names[i], j)}, body(s, byte(i*10+j)))
		}
	}
	waitUp(t, nodes)
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	for w := range 36 {
		wg.Go(func() {
			from := nodes[w%3]
			for k := range 20 {
				i := (w + 1 + k%2) % 3 // one of the other two
				j := (w + k) % len(sizes)
				_, got, err := from.Fetch(context.Background(), names[i], Request{Group: "g", Path: fmt.Sprintf("/%s/%d", names[i], j)})
				if err == nil && !bytes.Equal(got, body(sizes[j], byte(i*10+j))) {
					err = fmt.Errorf("wrong body for /%s/%d", names[i], j)
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}

func TestTOCSnapshotAndDeltas(t *testing.T) {
	// a has content, and is not ready, before b connects.
	pcA, pcB := bindLoopback(t), bindLoopback(t)
	peers := []Peer{{"a", pcA.LocalAddr().String()}, {"b", pcB.LocalAddr().String()}}
	ba, bb := newMemBackend(), newMemBackend()
	ba.ready.Store(false)
	for i := range 3000 { // more than one frame
		ba.put("site", sampleMeta(i), nil)
	}
	ba.put("docs", Meta{Path: "/index.html", Version: "d1"}, []byte("hi"))
	ra, rb := newRecorder(), newRecorder()
	na, err := Listen(Config{Name: "a", PacketConn: pcA, Peers: peers, TLS: credsFor(t, testSecret, "a"), Backend: ba, OnEvent: ra.on, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer na.Close()
	nb, err := Listen(Config{Name: "b", PacketConn: pcB, Peers: peers, TLS: credsFor(t, testSecret, "b"), Backend: bb, OnEvent: rb.on, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()

	var i int
	up := rb.wait(t, &i, 5*time.Second, kind(EventUp, "a"))
	if up.Ready {
		t.Error("a reported ready before it was")
	}
	snap := rb.wait(t, &i, 5*time.Second, kind(EventSnapshot, "a"))
	total := map[string]int{}
	for _, g := range snap.Snapshot {
		total[g.Group] += len(g.Items)
	}
	if total["site"] != 3000 || total["docs"] != 1 || len(snap.Snapshot) != 2 {
		t.Fatalf("snapshot: %v", total)
	}
	for _, g := range snap.Snapshot {
		for _, it := range g.Items {
			if g.Group == "site" && len(it.Variants) != 2 {
				t.Fatalf("item %s lost its variants", it.Path)
			}
		}
	}

	// Deltas and readiness, in order.
	m := ba.put("site", Meta{Path: "/new.css", Version: "n1", ETag: `"n1"`}, []byte("x"))
	na.Publish(Delta{Group: "site", Upserts: []Meta{m}})
	na.Publish(Delta{Group: "site", Deletes: []string{"/dir0/file0.html", "/dir0/file1.html"}})
	ba.ready.Store(true)
	na.PublishReady(true)

	d := rb.wait(t, &i, 5*time.Second, kind(EventDelta, "a"))
	if d.Delta.Group != "site" || len(d.Delta.Upserts) != 1 || !metaEqual(d.Delta.Upserts[0], m) {
		t.Fatalf("upsert delta: %+v", d.Delta)
	}
	d = rb.wait(t, &i, 5*time.Second, kind(EventDelta, "a"))
	if len(d.Delta.Deletes) != 2 || d.Delta.Deletes[1] != "/dir0/file1.html" {
		t.Fatalf("delete delta: %+v", d.Delta)
	}
	if e := rb.wait(t, &i, 5*time.Second, kind(EventReady, "a")); !e.Ready {
		t.Fatal("ready event says not ready")
	}
	if ps := nb.Peers(); !ps[0].Up || !ps[0].Ready || ps[0].Name != "a" || ps[0].LastSeen.IsZero() {
		t.Fatalf("b's view of a: %+v", ps)
	}
	// a got b's (empty) snapshot too.
	var j int
	if e := ra.wait(t, &j, 5*time.Second, kind(EventSnapshot, "b")); len(e.Snapshot) != 0 {
		t.Fatalf("b's snapshot: %+v", e.Snapshot)
	}
}

// TestObserver: a node that is in nobody's peer list (a director) connects
// with its cluster leaf, gets the tables of content and can fetch.
func TestObserver(t *testing.T) {
	nodes := startCluster(t, []string{"n1", "n2"}, nil)
	nodes[0].backend.put("g", Meta{Path: "/x", Version: "1"}, []byte("hello"))
	rec := newRecorder()
	obs, err := Listen(Config{
		Name: "director", PacketConn: bindLoopback(t), Observer: true, OnEvent: rec.on,
		Peers: []Peer{{"n1", nodes[0].addr}, {"n2", nodes[1].addr}},
		TLS:   credsFor(t, testSecret, "director"), Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	var i int
	e := rec.wait(t, &i, 5*time.Second, kind(EventSnapshot, "n1"))
	if len(e.Snapshot) != 1 || e.Snapshot[0].Items[0].Path != "/x" {
		t.Fatalf("snapshot %+v", e.Snapshot)
	}
	if _, b, err := obs.Fetch(context.Background(), "n1", Request{Group: "g", Path: "/x"}); err != nil || string(b) != "hello" {
		t.Fatalf("observer fetch: %q %v", b, err)
	}
	for _, p := range nodes[0].Peers() {
		if p.Name == "director" {
			t.Fatal("observer listed as a peer")
		}
	}
}

func TestPeerDownAndBack(t *testing.T) {
	nodes := startCluster(t, []string{"n1", "n2"}, nil)
	a, b := nodes[0], nodes[1]
	waitUp(t, nodes)
	var i int
	a.rec.wait(t, &i, time.Second, kind(EventUp, "n2"))

	start := time.Now()
	b.Close()
	a.rec.wait(t, &i, time.Second, kind(EventDown, "n2"))
	t.Logf("down seen after %v", time.Since(start))
	if a.Peers()[0].Up {
		t.Fatal("peer still up")
	}
	if _, _, err := a.Fetch(context.Background(), "n2", Request{Group: "g", Path: "/x"}); !errors.Is(err, ErrPeerDown) {
		t.Fatalf("fetch from a down peer: %v", err)
	}

	// Give the dial loop time to back off to its cap, then restart n2 on
	// the same address: it is re-dialled within about a second.
	time.Sleep(1500 * time.Millisecond)
	pc, err := net.ListenPacket("udp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	bb := newMemBackend()
	bb.put("g", Meta{Path: "/x"}, []byte("back"))
	b2, err := Listen(Config{Name: "n2", PacketConn: pc, Peers: []Peer{{"n1", a.addr}}, TLS: credsFor(t, testSecret, "n2"), Backend: bb, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	start = time.Now()
	a.rec.wait(t, &i, 3*time.Second, kind(EventUp, "n2"))
	t.Logf("up again after %v", time.Since(start))
	if _, got, err := a.Fetch(context.Background(), "n2", Request{Group: "g", Path: "/x"}); err != nil || string(got) != "back" {
		t.Fatalf("fetch after restart: %q %v", got, err)
	}
}

// lossyConn drops every packet both ways while off is set: a peer that
// crashed or was cut off, without a CONNECTION_CLOSE.
type lossyConn struct {
	net.PacketConn
	off atomic.Bool
}

func (c *lossyConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(b)
		if err != nil || !c.off.Load() {
			return n, addr, err
		}
	}
}

func (c *lossyConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if c.off.Load() {
		return len(b), nil
	}
	return c.PacketConn.WriteTo(b, addr)
}

func TestPeerSilentDetected(t *testing.T) {
	var lossy *lossyConn
	nodes := startCluster(t, []string{"n1", "n2"}, func(i int, c *Config) {
		c.IdleTimeout = 600 * time.Millisecond
		if i == 1 {
			lossy = &lossyConn{PacketConn: c.PacketConn}
			c.PacketConn = lossy
		}
	})
	waitUp(t, nodes)
	var i int
	start := time.Now()
	lossy.off.Store(true)
	nodes[0].rec.wait(t, &i, 2*time.Second, kind(EventDown, "n2"))
	t.Logf("silent peer down after %v", time.Since(start))
	lossy.off.Store(false)
	nodes[0].rec.wait(t, &i, 3*time.Second, kind(EventUp, "n2"))
}

// TestPeerCrashDetected: a peer whose socket vanishes (a crash: no
// CONNECTION_CLOSE leaves it) is seen down within DefaultIdleTimeout, by a
// peer and by an observer, and a peer that merely stops answering too.
func TestPeerCrashDetected(t *testing.T) {
	const limit = DefaultIdleTimeout + 200*time.Millisecond
	for _, how := range []string{"socket closed", "silent"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			var lossy *lossyConn
			nodes := startCluster(t, []string{"n1", "n2"}, func(i int, c *Config) {
				if i == 1 {
					lossy = &lossyConn{PacketConn: c.PacketConn}
					c.PacketConn = lossy
				}
			})
			waitUp(t, nodes)
			obs, rec := startObserver(t, "director", nodes)
			waitPeer(t, obs, "n2", func(p PeerState) bool { return p.Up })
			// Let keep-alives run for a while: a crash in a quiet moment.
			time.Sleep(DefaultIdleTimeout/2 + time.Duration(rand.IntN(300))*time.Millisecond)

			var i, j int
			start := time.Now()
			if how == "silent" {
				lossy.off.Store(true)
			} else {
				lossy.PacketConn.Close()
			}
			nodes[0].rec.wait(t, &i, 3*time.Second, kind(EventDown, "n2"))
			d1 := time.Since(start)
			rec.wait(t, &j, 3*time.Second, kind(EventDown, "n2"))
			d2 := time.Since(start)
			t.Logf("down after %v (peer), %v (observer)", d1, d2)
			if d1 > limit || d2 > limit {
				t.Errorf("down after %v (peer), %v (observer); want within %v", d1, d2, limit)
			}
			if peerState(t, nodes[0].Node, "n2").Up || peerState(t, obs, "n2").Up {
				t.Error("crashed peer still up")
			}
		})
	}
}

// dialRaw dials a node outside of a Node, with the given TLS config.
func dialRaw(t *testing.T, addr string, tc *tls.Config) (*quic.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return quic.DialAddr(ctx, addr, tc, quicConfig(DefaultIdleTimeout))
}

// refused checks that conn (if the client's side of the handshake
// finished at all) cannot carry a request.
func refused(t *testing.T, conn *quic.Conn, err error) {
	t.Helper()
	if err != nil {
		t.Logf("refused at dial: %v", err)
		return
	}
	defer conn.CloseWithError(0, "")
	str, err := conn.OpenStreamSync(context.Background())
	if err == nil {
		b, _ := appendGet(nil, &Request{Group: "g", Path: "/x"})
		str.Write(b)
		str.Close()
		str.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, _, err = readFrame(str, nil)
	}
	if err == nil {
		t.Fatal("request answered")
	}
	t.Logf("refused: %v", err)
}

func TestRefusedWithoutClientCert(t *testing.T) {
	nodes := startCluster(t, []string{"n1"}, nil)
	nodes[0].backend.put("g", Meta{Path: "/x"}, []byte("secret data"))
	creds := credsFor(t, testSecret, "client")
	tc := creds.ClientConfig("n1")
	tc.Certificates = nil
	conn, err := dialRaw(t, nodes[0].addr, tc)
	refused(t, conn, err)
	if n := nodes[0].backend.gets.Load(); n != 0 {
		t.Fatalf("backend served %d requests", n)
	}
}

func TestRefusedWrongSecret(t *testing.T) {
	nodes := startCluster(t, []string{"n1"}, nil)
	nodes[0].backend.put("g", Meta{Path: "/x"}, []byte("secret data"))

	// A client that skips verifying the server still has a leaf from the
	// wrong CA: the server refuses it.
	wrong := credsFor(t, "not the cluster secret at all", "n2")
	tc := wrong.ClientConfig("n1")
	tc.InsecureSkipVerify = true
	conn, err := dialRaw(t, nodes[0].addr, tc)
	refused(t, conn, err)

	// A Node with the wrong secret never gets a peer up, either way.
	rec := newRecorder()
	bad, err := Listen(Config{Name: "n2", PacketConn: bindLoopback(t), Peers: []Peer{{"n1", nodes[0].addr}},
		TLS: wrong, OnEvent: rec.on, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	time.Sleep(500 * time.Millisecond)
	if bad.Peers()[0].Up || rec.count(func(Event) bool { return true }) != 0 || nodes[0].rec.count(func(Event) bool { return true }) != 0 {
		t.Fatalf("wrong-secret node got through: %+v", bad.Peers())
	}
	if n := nodes[0].backend.gets.Load(); n != 0 {
		t.Fatalf("backend served %d requests", n)
	}
}

// TestHelloIdentity: a HELLO must carry a name from the sender's
// certificate.
func TestHelloIdentity(t *testing.T) {
	nodes := startCluster(t, []string{"n1"}, nil)
	conn, err := dialRaw(t, nodes[0].addr, credsFor(t, testSecret, "mallory").ClientConfig("n1"))
	if err != nil {
		t.Fatal(err)
	}
	str, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := appendHello(nil, &hello{Name: "n2"})
	str.Write(b)
	str.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, _, err = readFrame(str, nil)
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || ae.ErrorCode != CloseBadIdentity {
		t.Fatalf("got %v, want CloseBadIdentity", err)
	}
}

func TestStreamDeadline(t *testing.T) {
	nodes := startCluster(t, []string{"n1"}, func(i int, c *Config) { c.StreamTimeout = 200 * time.Millisecond })
	nodes[0].backend.put("g", Meta{Path: "/x"}, []byte("data"))
	conn, err := dialRaw(t, nodes[0].addr, credsFor(t, testSecret, "slowloris").ClientConfig("n1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	get, _ := appendGet(nil, &Request{Group: "g", Path: "/x"})
	for name, send := range map[string][]byte{
		"partial header":  get[:3],
		"partial payload": get[:len(get)-1],
		"no end":          get, // the request is whole but the stream is never closed
	} {
		t.Run(name, func(t *testing.T) {
			str, err := conn.OpenStreamSync(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			str.Write(send)
			start := time.Now()
			str.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, _, err = readFrame(str, nil)
			var se *quic.StreamError
			if !errors.As(err, &se) || se.ErrorCode != ErrCodeTimeout || !se.Remote {
				t.Fatalf("got %v, want a reset with ErrCodeTimeout", err)
			}
			if d := time.Since(start); d < 150*time.Millisecond || d > time.Second {
				t.Errorf("reset after %v, want about 200ms", d)
			}
			str.CancelWrite(0)
		})
	}
	// A well-behaved request on the same connection still works.
	str, _ := conn.OpenStreamSync(context.Background())
	str.Write(get)
	str.Close()
	str.SetReadDeadline(time.Now().Add(3 * time.Second))
	ft, p, err := readFrame(str, nil)
	if err != nil || ft != frameResponse {
		t.Fatal(err)
	}
	if status, m, err := decodeResponse(p); err != nil || status != 0 || m.Size != 4 {
		t.Fatalf("%v %+v %v", status, m, err)
	}
}

func TestListenErrors(t *testing.T) {
	creds := credsFor(t, testSecret, "n1")
	for name, cfg := range map[string]Config{
		"no name":        {TLS: creds, Addr: "127.0.0.1:0"},
		"no tls":         {Name: "n1", Addr: "127.0.0.1:0"},
		"cert for other": {Name: "n2", TLS: creds, Addr: "127.0.0.1:0"},
		"peer twice":     {Name: "n1", TLS: creds, Addr: "127.0.0.1:0", Peers: []Peer{{"n2", "127.0.0.1:1"}, {"n2", "127.0.0.1:2"}}},
		"peer no addr":   {Name: "n1", TLS: creds, Addr: "127.0.0.1:0", Peers: []Peer{{"n2", ""}}},
		"bad addr":       {Name: "n1", TLS: creds, Addr: "256.0.0.1:0"},
	} {
		if n, err := Listen(cfg); err == nil {
			n.Close()
			t.Errorf("%s: Listen succeeded", name)
		}
	}
}

// TestStallClosesConnections: a node that finds it was not scheduled for
// longer than the idle timeout (its peers have dropped their ends by then,
// and its own idle timeout may be stretched by the round trips quic-go
// measured across the stall) closes its connections, dialled and
// accepted, and both sides dial again: down, up, fetches work. A shorter
// delay closes nothing.
func TestStallClosesConnections(t *testing.T) {
	nodes := startCluster(t, []string{"n1", "n2"}, nil)
	a, b := nodes[0], nodes[1]
	waitUp(t, nodes)
	var i, j int
	a.rec.wait(t, &i, time.Second, kind(EventUp, "n2"))
	b.rec.wait(t, &j, time.Second, kind(EventUp, "n1"))
	b.backend.put("g", Meta{Path: "/x"}, []byte("x"))

	a.checkStall(a.stallLimit() / 2)
	time.Sleep(2 * a.cfg.IdleTimeout)
	if n := a.rec.count(kind(EventDown, "n2")) + b.rec.count(kind(EventDown, "n1")); n != 0 || a.stalls.Load() != 0 {
		t.Fatalf("a delay under the idle timeout: %d peers down, %d stalls", n, a.stalls.Load())
	}

	a.checkStall(2 * a.stallLimit())
	if a.stalls.Load() != 1 {
		t.Fatalf("stalls = %d; want 1", a.stalls.Load())
	}
	a.rec.wait(t, &i, time.Second, kind(EventDown, "n2"))
	b.rec.wait(t, &j, time.Second, kind(EventDown, "n1")) // its dialled connection, which a accepted
	a.rec.wait(t, &i, 3*time.Second, kind(EventUp, "n2"))
	b.rec.wait(t, &j, 3*time.Second, kind(EventUp, "n1"))
	if _, got, err := a.Fetch(context.Background(), "n2", Request{Group: "g", Path: "/x"}); err != nil || string(got) != "x" {
		t.Fatalf("fetch after the stall: %q %v", got, err)
	}
}
