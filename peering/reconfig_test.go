package peering

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// listenNode starts a node named name on pc, dialling peers.
func listenNode(t *testing.T, name string, pc net.PacketConn, peers []Peer, tweak func(*Config)) *testNode {
	t.Helper()
	tn := &testNode{backend: newMemBackend(), rec: newRecorder(), addr: pc.LocalAddr().String()}
	cfg := Config{Name: name, PacketConn: pc, Peers: peers, TLS: credsFor(t, testSecret, name),
		Backend: tn.backend, OnEvent: tn.rec.on, Logger: testLogger(t).Named(name)}
	if tweak != nil {
		tweak(&cfg)
	}
	n, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tn.Node = n
	t.Cleanup(func() { n.Close() })
	return tn
}

// dialled returns n's current connection to the configured peer name, nil
// if none.
func dialled(n *Node, name string) *quic.Conn {
	if p := n.lookup(name); p != nil {
		return p.conn.Load()
	}
	return nil
}

// subscribed counts the subscriptions of nodes named name on n.
func subscribed(n *Node, name string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for s := range n.subs {
		if s.name == name {
			c++
		}
	}
	return c
}

func peerNames(n *Node) []string {
	var out []string
	for _, p := range n.Peers() {
		out = append(out, p.Name)
	}
	return out
}

// closedRemoved waits for conn to end and checks it was closed locally
// with CloseRemoved.
func closedRemoved(t *testing.T, conn *quic.Conn) {
	t.Helper()
	select {
	case <-conn.Context().Done():
	case <-time.After(2 * time.Second):
		t.Fatal("connection still open")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(conn.Context()); !errors.As(err, &ae) || ae.ErrorCode != CloseRemoved || ae.Remote {
		t.Fatalf("connection ended with %v, want a local CloseRemoved", err)
	}
}

// notPurge matches the events of peer that are not purges.
func notPurge(peer string) func(Event) bool {
	return func(e Event) bool {
		return e.Peer == peer && e.Kind != EventPurge && e.Kind != EventSync && e.Kind != EventTOC
	}
}

// TestSetPeers: a knows only b; adding c dials it at once, b's connection
// is untouched; removing b closes a's connection to it, drops it from
// Peers() and Fetch, and leaves b's own connection to a served.
func TestSetPeers(t *testing.T) {
	t.Parallel()
	pcA, pcB, pcC := bindLoopback(t), bindLoopback(t), bindLoopback(t)
	peerA, peerB, peerC := Peer{"a", pcA.LocalAddr().String()}, Peer{"b", pcB.LocalAddr().String()}, Peer{"c", pcC.LocalAddr().String()}
	a := listenNode(t, "a", pcA, []Peer{peerB}, nil)
	b := listenNode(t, "b", pcB, []Peer{peerA}, nil)
	c := listenNode(t, "c", pcC, nil, nil)
	a.backend.put("g", Meta{Path: "/a", Version: "1"}, []byte("from a"))
	c.backend.put("g", Meta{Path: "/c", Version: "1"}, []byte("from c"))
	ctx := context.Background()

	var i int
	a.rec.wait(t, &i, 5*time.Second, kind(EventSnapshot, "b"))
	connB := dialled(a.Node, "b")
	if connB == nil {
		t.Fatal("a's connection to b is not up")
	}
	if _, _, err := a.Fetch(ctx, "c", Request{Group: "g", Path: "/c"}); !errors.Is(err, ErrPeerDown) {
		t.Fatalf("fetch from an unconfigured peer: %v, want ErrPeerDown", err)
	}

	// Add c: up, snapshot, fetchable.
	a.SetPeers([]Peer{peerB, peerC})
	if got := peerNames(a.Node); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("peers %v", got)
	}
	j := i
	if e := a.rec.wait(t, &j, 5*time.Second, kind(EventUp, "c")); !e.Ready {
		t.Error("c not ready")
	}
	snap := a.rec.wait(t, &j, 5*time.Second, kind(EventSnapshot, "c"))
	if len(snap.Snapshot) != 1 || len(snap.Snapshot[0].Items) != 1 || snap.Snapshot[0].Items[0].Path != "/c" {
		t.Fatalf("c's snapshot %+v", snap.Snapshot)
	}
	if _, got, err := a.Fetch(ctx, "c", Request{Group: "g", Path: "/c"}); err != nil || string(got) != "from c" {
		t.Fatalf("fetch from c: %q %v", got, err)
	}

	// Idempotent, and b (listed all along) keeps its connection: no
	// re-dial, no second HELLO or snapshot. Self is skipped.
	connC := dialled(a.Node, "c")
	a.SetPeers([]Peer{peerC, peerB, peerA})
	a.SetPeers([]Peer{peerC, peerB})
	if got := peerNames(a.Node); !slices.Equal(got, []string{"c", "b"}) {
		t.Fatalf("peers %v after reordering", got)
	}
	time.Sleep(100 * time.Millisecond)
	if dialled(a.Node, "b") != connB || dialled(a.Node, "c") != connC {
		t.Fatal("an unchanged peer was re-dialled")
	}
	for _, name := range []string{"b", "c"} {
		if n := a.rec.count(kind(EventUp, name)); n != 1 {
			t.Errorf("%d EventUp for %s", n, name)
		}
		if n := a.rec.count(kind(EventSnapshot, name)); n != 1 {
			t.Errorf("%d snapshots from %s", n, name)
		}
	}
	if n := subscribed(b.Node, "a") + subscribed(c.Node, "a"); n != 2 {
		t.Errorf("a subscribed %d times to b and c", n)
	}

	// Remove b.
	a.SetPeers([]Peer{peerC})
	if got := peerNames(a.Node); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("peers %v after removing b", got)
	}
	start := time.Now()
	if _, _, err := a.Fetch(ctx, "b", Request{Group: "g", Path: "/b"}); !errors.Is(err, ErrPeerDown) {
		t.Fatalf("fetch from a removed peer: %v, want ErrPeerDown", err)
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Errorf("fetch from a removed peer took %v", d)
	}
	a.rec.wait(t, &j, 2*time.Second, kind(EventDown, "b"))
	closedRemoved(t, connB)
	deadline := time.Now().Add(2 * time.Second)
	for subscribed(b.Node, "a") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a still subscribed to b")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if dialled(a.Node, "c") != connC {
		t.Fatal("c re-dialled when b was removed")
	}

	// b still lists a: its connection is served like an observer's, and
	// raises no event on a.
	if !peerState(t, b.Node, "a").Up || subscribed(a.Node, "b") != 1 {
		t.Fatal("b's connection to a is affected")
	}
	if _, got, err := b.Fetch(ctx, "a", Request{Group: "g", Path: "/a"}); err != nil || string(got) != "from a" {
		t.Fatalf("b fetching from a: %q %v", got, err)
	}
	a.Purge(Purge{Group: "g", Path: "/a"})
	var k int
	b.rec.wait(t, &k, 2*time.Second, purgeFrom("a"))
	before := a.rec.count(notPurge("b"))
	time.Sleep(100 * time.Millisecond)
	if after := a.rec.count(notPurge("b")); after != before {
		t.Errorf("%d events from b after its removal", after-before)
	}
	if n := b.rec.count(purgeFrom("a")); n != 1 {
		t.Errorf("b got %d purges", n)
	}
	if n := b.rec.count(kind(EventDown, "a")); n != 0 {
		t.Errorf("b saw a down %d times", n)
	}

	// Removing everything, then adding b back, dials it again.
	a.SetPeers(nil)
	if len(a.Peers()) != 0 {
		t.Fatalf("peers %+v", a.Peers())
	}
	a.rec.wait(t, &j, 2*time.Second, kind(EventDown, "c"))
	a.SetPeers([]Peer{peerB})
	a.rec.wait(t, &j, 5*time.Second, kind(EventSnapshot, "b"))
	if c := dialled(a.Node, "b"); c == nil || c == connB {
		t.Fatal("b not re-dialled")
	}
}

// TestSetPeersMove: a peer listed at a new address is re-dialled there; the
// events of the old connection come first.
func TestSetPeersMove(t *testing.T) {
	t.Parallel()
	pcA, pc1, pc2 := bindLoopback(t), bindLoopback(t), bindLoopback(t)
	// Two nodes named c: the old and the new home of the same member.
	c1 := listenNode(t, "c", pc1, nil, func(c *Config) { c.Lan = "10.0.0.1:80" })
	c2 := listenNode(t, "c", pc2, nil, func(c *Config) { c.Lan = "10.0.0.2:80" })
	c1.backend.put("g", Meta{Path: "/x", Version: "old"}, []byte("old home"))
	c2.backend.put("g", Meta{Path: "/x", Version: "new"}, []byte("new home"))
	a := listenNode(t, "a", pcA, []Peer{{"c", c1.addr}}, nil)

	var i int
	a.rec.wait(t, &i, 5*time.Second, kind(EventSnapshot, "c"))
	old := dialled(a.Node, "c")
	a.SetPeers([]Peer{{"c", c2.addr}})
	if p := a.Peers()[0]; p.Addr != c2.addr || p.Lan != "10.0.0.1:80" {
		t.Fatalf("state right after the move: %+v", p)
	}
	a.rec.wait(t, &i, 2*time.Second, kind(EventDown, "c"))
	a.rec.wait(t, &i, 5*time.Second, kind(EventUp, "c"))
	snap := a.rec.wait(t, &i, 5*time.Second, kind(EventSnapshot, "c"))
	if snap.Snapshot[0].Items[0].Version != "new" {
		t.Fatalf("snapshot %+v", snap.Snapshot)
	}
	closedRemoved(t, old)
	if _, got, err := a.Fetch(context.Background(), "c", Request{Group: "g", Path: "/x"}); err != nil || string(got) != "new home" {
		t.Fatalf("fetch after the move: %q %v", got, err)
	}
	if p := peerState(t, a.Node, "c"); !p.Up || p.Lan != "10.0.0.2:80" {
		t.Fatalf("state after the move: %+v", p)
	}
	if n := a.rec.count(kind(EventDown, "c")); n != 1 {
		t.Errorf("%d EventDown", n)
	}

	// Moving to an address where nothing answers, then back: no event
	// from the dead address, up again at the live one.
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().String()
	dead.Close()
	a.SetPeers([]Peer{{"c", deadAddr}})
	a.rec.wait(t, &i, 2*time.Second, kind(EventDown, "c"))
	time.Sleep(100 * time.Millisecond)
	a.SetPeers([]Peer{{"c", c1.addr}})
	if e := a.rec.wait(t, &i, 5*time.Second, func(e Event) bool { return e.Peer == "c" }); e.Kind != EventUp || e.Lan != "10.0.0.1:80" {
		t.Fatalf("first event after moving back: %+v", e)
	}
}

// TestSetLan: a changed LAN address reaches the peers and observers that
// dialled the node, and the HELLO of later connections.
func TestSetLan(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, []string{"n1", "n2"}, func(i int, c *Config) { c.Lan = fmt.Sprintf("127.0.0.1:%d", 8081+i) })
	waitUp(t, nodes)
	obs, _ := startObserver(t, "director", nodes)
	waitPeer(t, obs, "n1", func(p PeerState) bool { return p.Up })
	events := nodes[1].rec.count(func(Event) bool { return true })

	for _, lan := range []string{"10.9.9.9:8443", "", "cache-1.lan:443"} {
		start := time.Now()
		if err := nodes[0].SetLan(lan); err != nil {
			t.Fatal(err)
		}
		for _, n := range []*Node{nodes[1].Node, obs} {
			p := waitPeer(t, n, "n1", func(p PeerState) bool { return p.Lan == lan })
			if !p.Up {
				t.Errorf("%s: %+v", n.Name(), p)
			}
		}
		d := time.Since(start)
		t.Logf("LAN %q seen after %v", lan, d)
		if d > 100*time.Millisecond {
			t.Errorf("LAN %q seen after %v", lan, d)
		}
	}
	if err := nodes[0].SetLan("cache-1.lan:443"); err != nil { // unchanged
		t.Fatal(err)
	}
	for _, bad := range []string{"nope", "host:0", "a b:80"} {
		if err := nodes[0].SetLan(bad); err == nil {
			t.Errorf("SetLan(%q) accepted", bad)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if p := peerState(t, nodes[1].Node, "n1"); p.Lan != "cache-1.lan:443" {
		t.Errorf("after invalid SetLan calls: %+v", p)
	}
	if n := nodes[1].rec.count(func(Event) bool { return true }); n != events {
		t.Errorf("%d events raised by SetLan", n-events)
	}
	// The connections of the other direction, and their HELLO, are not
	// affected; a later connection gets the new address in HELLO.
	if p := peerState(t, nodes[0].Node, "n2"); p.Lan != "127.0.0.1:8082" {
		t.Errorf("n1 sees n2 at %q", p.Lan)
	}
	obs2, _ := startObserver(t, "director2", nodes[:1])
	if p := waitPeer(t, obs2, "n1", func(p PeerState) bool { return p.Up }); p.Lan != "cache-1.lan:443" {
		t.Errorf("new observer sees %+v", p)
	}
}

// TestSetPeersConcurrent: SetPeers, SetLan, Fetch, Purge, Peers and Close
// at once (for the race detector); the cluster converges afterwards.
func TestSetPeersConcurrent(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, []string{"n1", "n2", "n3"}, nil)
	all := make([]Peer, len(nodes))
	for i, n := range nodes {
		all[i] = Peer{n.Name(), n.addr}
		n.backend.put("g", Meta{Path: "/" + n.Name()}, []byte(n.Name()))
	}
	waitUp(t, nodes)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 6 {
		n := nodes[w%3]
		wg.Go(func() {
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				switch w / 3 {
				case 0:
					var sub []Peer
					for _, p := range all {
						if rand.IntN(2) == 0 {
							sub = append(sub, p)
						}
					}
					n.SetPeers(sub)
					n.SetLan(fmt.Sprintf("127.0.0.1:%d", 1+k%1000))
					time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
				case 1:
					for _, p := range all {
						n.Fetch(context.Background(), p.Name, Request{Group: "g", Path: "/" + p.Name})
					}
					n.Peers()
					n.Purge(Purge{Group: "g", Path: "/x"})
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	time.Sleep(400 * time.Millisecond)
	close(stop)
	wg.Wait()
	for _, n := range nodes {
		n.SetPeers(all)
	}
	waitUp(t, nodes)
	for _, n := range nodes {
		for _, p := range all[:2] {
			if p.Name == n.Name() {
				continue
			}
			if _, got, err := n.Fetch(context.Background(), p.Name, Request{Group: "g", Path: "/" + p.Name}); err != nil || string(got) != p.Name {
				t.Fatalf("%s fetching from %s: %q %v", n.Name(), p.Name, got, err)
			}
		}
	}

	// Close while SetPeers runs; SetPeers and SetLan after Close do
	// nothing harmful.
	var cw sync.WaitGroup
	cw.Go(func() {
		for range 20 {
			nodes[0].SetPeers(all[1:2])
			nodes[0].SetPeers(all)
		}
	})
	nodes[0].Close()
	cw.Wait()
	nodes[0].SetPeers(nil)
	if err := nodes[0].SetLan("127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := nodes[0].Fetch(context.Background(), "n2", Request{Group: "g", Path: "/n2"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("fetch after Close: %v", err)
	}
}
