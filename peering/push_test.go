package peering

import (
	"sync"
	"testing"
	"time"
)

// spreadLog records the spread messages a node receives.
type spreadLog struct {
	mu  sync.Mutex
	got []string
}

func (l *spreadLog) on(from string, s Spread) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, from+" "+s.describe())
}

func (s Spread) describe() string {
	k := "carry"
	if s.Kind == SpreadHeld {
		k = "held"
	}
	if !s.Carry {
		k = "no-" + k
	}
	return k + " " + s.Path + "@" + s.Version
}

func (l *spreadLog) wait(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		for _, g := range l.got {
			if g == want {
				l.mu.Unlock()
				return
			}
		}
		l.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Fatalf("never received %q; got %q", want, l.got)
}

// TestSpreadFrames: a director (observer) tells a node to carry a path and
// to stop; the node answers HELD to the director only.
func TestSpreadFrames(t *testing.T) {
	var logs [2]spreadLog
	nodes := startCluster(t, []string{"n1", "n2"}, func(i int, c *Config) { c.OnSpread = logs[i].on })
	waitUp(t, nodes)
	var dlog spreadLog
	rec := newRecorder()
	var peers []Peer
	for _, n := range nodes {
		peers = append(peers, Peer{Name: n.Name(), Addr: n.addr})
	}
	dir, err := Listen(Config{Name: "director", PacketConn: bindLoopback(t), Observer: true, OnEvent: rec.on,
		OnSpread: dlog.on, Peers: peers, TLS: credsFor(t, testSecret, "director"), Logger: testLogger(t).Named("director")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dir.Close() })
	for _, n := range nodes {
		waitPeer(t, dir, n.Name(), func(p PeerState) bool { return p.Up })
	}

	if ok, err := dir.SendSpread("n2", Spread{Kind: SpreadCarry, Path: "/hot.css", Carry: true}); !ok || err != nil {
		t.Fatalf("SendSpread carry: %v %v", ok, err)
	}
	logs[1].wait(t, "director carry /hot.css@")
	// Held goes back over the director's connection (n2 never dials it).
	waitSubscribed(t, nodes[1].Node, "director")
	if ok, err := nodes[1].SendSpread("director", Spread{Kind: SpreadHeld, Path: "/hot.css", Version: "v1", Carry: true}); !ok || err != nil {
		t.Fatalf("SendSpread held: %v %v", ok, err)
	}
	dlog.wait(t, "n2 held /hot.css@v1")
	if _, err := dir.SendSpread("n2", Spread{Kind: SpreadCarry, Path: "/hot.css"}); err != nil {
		t.Fatal(err)
	}
	logs[1].wait(t, "director no-carry /hot.css@")

	logs[0].mu.Lock()
	if len(logs[0].got) != 0 {
		t.Errorf("n1 received %q; nothing was sent to it", logs[0].got)
	}
	logs[0].mu.Unlock()
	if ok, _ := dir.SendSpread("n9", Spread{Kind: SpreadCarry, Path: "/x", Carry: true}); ok {
		t.Error("SendSpread to an unknown node reported queued")
	}
	if _, err := dir.SendSpread("n1", Spread{Kind: SpreadCarry, Path: string(make([]byte, maxPathLen+1))}); err == nil {
		t.Error("SendSpread of a path over the limit: no error")
	}
}

// waitSubscribed waits until a node named name has subscribed to n.
func waitSubscribed(t *testing.T, n *Node, name string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n.mu.Lock()
		for s := range n.subs {
			if s.name == name {
				n.mu.Unlock()
				return
			}
		}
		n.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: %s never subscribed", n.Name(), name)
}

// TestSpreadCodec: SPREAD and HELD round-trip, and malformed payloads are
// refused.
func TestSpreadCodec(t *testing.T) {
	for _, s := range []Spread{
		{Kind: SpreadCarry, Path: "/a", Carry: true},
		{Kind: SpreadCarry, Path: "/a"},
		{Kind: SpreadHeld, Path: "/b/c.js", Version: "abc", Carry: true},
		{Kind: SpreadHeld, Path: "/b"},
	} {
		b, err := appendSpread(nil, &s)
		if err != nil {
			t.Fatal(err)
		}
		ft, p, _, err := splitFrame(b)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeSpread(ft, p)
		if err != nil || got != s {
			t.Errorf("%+v: decoded %+v, %v", s, got, err)
		}
	}
	for _, bad := range [][]byte{{}, {1}, {2, 2, '/', 'a'}, {1, 0}, {1, 2, '/', 'a', 'x'}} {
		if s, err := decodeSpread(frameSpread, bad); err == nil {
			t.Errorf("%q decoded as %+v", bad, s)
		}
	}
	if _, err := appendSpread(nil, &Spread{Path: "/a"}); err == nil {
		t.Error("a Spread without a kind was encoded")
	}
}
