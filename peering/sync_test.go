package peering

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// syncTracker keeps, as a node's application does, where its tables of a
// peer are in the peer's change logs, and answers Config.Resume from it.
type syncTracker struct {
	mu     sync.Mutex
	groups map[string]*Resume // by group
	full   map[string]bool    // complete
}

func newSyncTracker() *syncTracker {
	return &syncTracker{groups: map[string]*Resume{}, full: map[string]bool{}}
}

func (st *syncTracker) on(e Event) {
	st.mu.Lock()
	defer st.mu.Unlock()
	switch e.Kind {
	case EventSync:
		s := e.Sync
		switch {
		case s.Mode == SyncSnapshot && !s.End:
			st.groups[s.Group] = &Resume{Group: s.Group, Log: s.Log, Seq: s.Seq}
			st.full[s.Group] = false
		case s.End && s.Mode != SyncPending:
			if r := st.groups[s.Group]; r != nil && r.Log == s.Log {
				r.Seq = max(r.Seq, s.Seq)
				st.full[s.Group] = true
			}
		}
	case EventDelta:
		if r := st.groups[e.Delta.Group]; r != nil {
			if e.Delta.Seq > r.Seq+1 {
				st.full[e.Delta.Group] = false
			}
			r.Seq = max(r.Seq, e.Delta.Seq)
		}
	}
}

func (st *syncTracker) resume(string) []Resume {
	st.mu.Lock()
	defer st.mu.Unlock()
	var out []Resume
	for g, r := range st.groups {
		if st.full[g] {
			out = append(out, *r)
		}
	}
	return out
}

// syncPair starts a, with items items in group "site", and b, which dials
// a and tracks a's tables.
func syncPair(t *testing.T, items int) (a, b *testNode) {
	t.Helper()
	a = listenNode(t, "a", bindLoopback(t), nil, nil)
	for i := range items {
		a.backend.put("site", sampleMeta(i), nil)
	}
	st := newSyncTracker()
	rec := newRecorder()
	b = listenNode(t, "b", bindLoopback(t), []Peer{{"a", a.addr}}, func(c *Config) {
		c.OnEvent = func(e Event) { st.on(e); rec.on(e) }
		c.Resume = st.resume
	})
	b.rec = rec
	return a, b
}

// A peer that was away for 10 s while 100 files changed gets only those
// changes when it reconnects, whatever the table's size: at most 1 MiB of
// table of content where the snapshot was far more (TOCBytesSent counts
// what the sender's encoder wrote).
func TestResumeSendsOnlyTheChanges(t *testing.T) {
	const items, changes = 100_000, 100
	a, b := syncPair(t, items)
	var i int
	snap := b.rec.wait(t, &i, 20*time.Second, kind(EventSnapshot, "a"))
	if n := len(snap.Snapshot[0].Items); n != items {
		t.Fatalf("snapshot of %d items, want %d", n, items)
	}
	first := a.TOCBytesSent()

	b.SetPeers(nil) // away for 10 s (1 s with -short), 10 changes a second
	b.rec.wait(t, &i, 5*time.Second, kind(EventDown, "a"))
	away := 10 * time.Second
	if testing.Short() {
		away = time.Second
	}
	for c := range changes {
		time.Sleep(away / changes)
		m := sampleMeta(items + c)
		a.backend.put("site", m, nil)
		a.Publish(Delta{Group: "site", Upserts: []Meta{m}})
	}
	a.Publish(Delta{Group: "site", Deletes: []string{sampleMeta(0).Path}})
	b.SetPeers([]Peer{{"a", a.addr}}) // back
	sy := b.rec.wait(t, &i, 5*time.Second, kind(EventSync, "a"))
	if sy.Sync.Mode != SyncResume {
		t.Fatalf("reconnect: %+v; want a resume", sy.Sync)
	}
	b.rec.wait(t, &i, 5*time.Second, kind(EventSnapshot, "a"))
	resync := a.TOCBytesSent() - first
	t.Logf("snapshot of %d items: %d bytes; resume after %d changes: %d bytes", items, first, changes+1, resync)
	if resync > 1<<20 || resync*20 > first {
		t.Errorf("resume took %d bytes (snapshot %d): want at most 1 MiB and a twentieth of the snapshot", resync, first)
	}
	got := map[string]bool{}
	deleted := false
	b.rec.mu.Lock()
	for _, e := range b.rec.events {
		if e.Kind == EventDelta && e.Peer == "a" {
			for _, m := range e.Delta.Upserts {
				got[m.Path] = true
			}
			deleted = deleted || len(e.Delta.Deletes) == 1
		}
	}
	b.rec.mu.Unlock()
	if len(got) != changes || !deleted {
		t.Errorf("changes received on resume: %d upserts, delete %v; want %d and true", len(got), deleted, changes)
	}
}

// A peer that missed more changes than the log keeps gets the group whole.
func TestResumeBeyondTheLogSendsASnapshot(t *testing.T) {
	old := maxLogBytes
	maxLogBytes = 2 << 10
	t.Cleanup(func() { maxLogBytes = old })
	a, b := syncPair(t, 500)
	var i int
	b.rec.wait(t, &i, 5*time.Second, kind(EventSnapshot, "a"))
	b.SetPeers(nil)
	b.rec.wait(t, &i, 5*time.Second, kind(EventDown, "a"))
	for c := range 100 { // some 20 KiB of changes
		m := sampleMeta(1000 + c)
		a.backend.put("site", m, nil)
		a.Publish(Delta{Group: "site", Upserts: []Meta{m}})
	}
	b.SetPeers([]Peer{{"a", a.addr}})
	sy := b.rec.wait(t, &i, 5*time.Second, kind(EventSync, "a"))
	if sy.Sync.Mode != SyncSnapshot {
		t.Fatalf("reconnect: %+v; want a snapshot", sy.Sync)
	}
	snap := b.rec.wait(t, &i, 5*time.Second, kind(EventSnapshot, "a"))
	if n := len(snap.Snapshot[0].Items); n != 600 {
		t.Errorf("snapshot of %d items, want 600", n)
	}
}

// A group not published yet is pending at connect, and comes whole, in
// frames, when it is (Resync), in order with the changes around it.
func TestPendingGroupThenResync(t *testing.T) {
	a := listenNode(t, "a", bindLoopback(t), nil, nil)
	pb := &pendingBackend{memBackend: a.backend}
	a.backend = pb.memBackend
	a.Node.backend = pb
	for i := range 3000 {
		a.backend.put("site", sampleMeta(i), nil)
	}
	b := listenNode(t, "b", bindLoopback(t), []Peer{{"a", a.addr}}, nil)
	var i int
	sy := b.rec.wait(t, &i, 5*time.Second, kind(EventSync, "a"))
	if sy.Sync.Mode != SyncPending || !sy.Sync.End {
		t.Fatalf("first sync %+v; want pending", sy.Sync)
	}
	b.rec.wait(t, &i, 5*time.Second, kind(EventSnapshot, "a"))
	before := sampleMeta(5000)
	a.Publish(Delta{Group: "site", Upserts: []Meta{before}})
	pb.setReady()
	a.Resync("site")
	after := sampleMeta(5001)
	a.backend.put("site", after, nil)
	a.Publish(Delta{Group: "site", Upserts: []Meta{after}})

	d := b.rec.wait(t, &i, 5*time.Second, kind(EventDelta, "a"))
	if d.Delta.Upserts[0].Path != before.Path {
		t.Fatalf("first delta %+v", d.Delta)
	}
	sy = b.rec.wait(t, &i, 5*time.Second, kind(EventSync, "a"))
	if sy.Sync.Mode != SyncSnapshot || sy.Sync.End || sy.Sync.Items < 3000 {
		t.Fatalf("resync begins %+v", sy.Sync)
	}
	n, frames := 0, 0
	for {
		e := b.rec.wait(t, &i, 5*time.Second, func(e Event) bool { return e.Peer == "a" && e.Kind != EventPurge })
		if e.Kind == EventSync {
			if !e.Sync.End || e.Sync.Seq != sy.Sync.Seq {
				t.Fatalf("resync ends %+v", e.Sync)
			}
			break
		}
		if e.Kind != EventTOC {
			t.Fatalf("event %v within the resync", e.Kind)
		}
		n += len(e.Delta.Upserts)
		frames++
	}
	if n != int(sy.Sync.Items) || frames < 2 {
		// The snapshot may already list the change published after it
		// was queued: 3000 or 3001.
		t.Errorf("resync listed %d items in %d frames; want %d in several", n, frames, sy.Sync.Items)
	}
	d = b.rec.wait(t, &i, 5*time.Second, kind(EventDelta, "a"))
	if d.Delta.Upserts[0].Path != after.Path || d.Delta.Seq != 1 {
		t.Fatalf("delta after the resync %+v; want %s, change 1 of the new log", d.Delta, after.Path)
	}
}

// pendingBackend says its groups are not published until setReady.
type pendingBackend struct {
	*memBackend
	mu    sync.Mutex
	ready bool
}

func (p *pendingBackend) setReady() {
	p.mu.Lock()
	p.ready = true
	p.mu.Unlock()
}

func (p *pendingBackend) TOC(w *TOCWriter) error {
	p.mu.Lock()
	ready := p.ready
	p.mu.Unlock()
	if ready {
		return p.memBackend.TOC(w)
	}
	_, err := w.Group("site", 0, false)
	return err
}

// The change log keeps the latest changes within its bounds, and answers
// what a peer at a given number misses.
func TestChangeLog(t *testing.T) {
	old := maxLogBytes
	maxLogBytes = 100
	t.Cleanup(func() { maxLogBytes = old })
	l := &changeLog{id: 1}
	for i := 1; i <= 20; i++ {
		l.seq = uint64(i)
		l.add(uint64(i), []byte(fmt.Sprintf("change%03d", i))) // 9 bytes
	}
	if len(l.entries) != 11 || l.entries[0].seq != 10 {
		t.Fatalf("kept %d changes from %d", len(l.entries), l.entries[0].seq)
	}
	for _, c := range []struct {
		seq  uint64
		n    int
		want bool
	}{{20, 0, true}, {19, 1, true}, {9, 11, true}, {8, 0, false}, {21, 0, false}, {0, 0, false}} {
		frames, ok := l.since(c.seq)
		if ok != c.want || len(frames) != c.n {
			t.Errorf("since(%d) = %d frames, %v; want %d, %v", c.seq, len(frames), ok, c.n, c.want)
		}
	}
}
