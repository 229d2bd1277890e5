package peering

import (
	"net"
	"strings"
	"testing"
	"time"
)

// peerState returns n's view of the configured peer named name.
func peerState(t *testing.T, n *Node, name string) PeerState {
	t.Helper()
	for _, p := range n.Peers() {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("%s: no peer %q", n.Name(), name)
	return PeerState{}
}

// waitPeer waits until n's view of the peer named name satisfies ok.
func waitPeer(t *testing.T, n *Node, name string, ok func(PeerState) bool) PeerState {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p := peerState(t, n, name)
		if ok(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: peer %+v", n.Name(), p)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startObserver starts an observer that dials nodes.
func startObserver(t *testing.T, name string, nodes []*testNode) (*Node, *recorder) {
	t.Helper()
	rec := newRecorder()
	var peers []Peer
	for _, n := range nodes {
		peers = append(peers, Peer{Name: n.Name(), Addr: n.addr})
	}
	obs, err := Listen(Config{
		Name: name, PacketConn: bindLoopback(t), Observer: true, OnEvent: rec.on, Peers: peers,
		TLS: credsFor(t, testSecret, name), Logger: testLogger(t).Named(name),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { obs.Close() })
	return obs, rec
}

// TestLanAdvertised: every node reports the LAN address its peers
// advertised, and so does an observer, with their ready state as it
// changes.
func TestLanAdvertised(t *testing.T) {
	lans := []string{"127.0.0.1:8081", "[::1]:8443", ""}
	nodes := startCluster(t, []string{"n1", "n2", "n3"}, func(i int, c *Config) { c.Lan = lans[i] })
	waitUp(t, nodes)
	for _, n := range nodes {
		for _, p := range n.Peers() {
			want := lans[p.Name[1]-'1']
			if p.Lan != want {
				t.Errorf("%s sees %s at LAN %q, want %q", n.Name(), p.Name, p.Lan, want)
			}
		}
	}
	var i int
	if e := nodes[1].rec.wait(t, &i, time.Second, kind(EventUp, "n1")); e.Lan != lans[0] {
		t.Errorf("EventUp.Lan %q", e.Lan)
	}

	obs, rec := startObserver(t, "director", nodes)
	for k, n := range nodes {
		p := waitPeer(t, obs, n.Name(), func(p PeerState) bool { return p.Up })
		if !p.Ready || p.Lan != lans[k] {
			t.Errorf("observer sees %+v", p)
		}
	}

	// Ready changes reach the observer.
	var j int
	nodes[1].backend.ready.Store(false)
	nodes[1].PublishReady(false)
	if e := rec.wait(t, &j, 2*time.Second, kind(EventReady, "n2")); e.Ready {
		t.Fatal("ready event says ready")
	}
	if p := peerState(t, obs, "n2"); p.Ready || !p.Up {
		t.Fatalf("observer sees %+v after PublishReady(false)", p)
	}
	nodes[1].backend.ready.Store(true)
	nodes[1].PublishReady(true)
	rec.wait(t, &j, 2*time.Second, kind(EventReady, "n2"))
	if p := peerState(t, obs, "n2"); !p.Ready {
		t.Fatalf("observer sees %+v after PublishReady(true)", p)
	}

	// The LAN address is kept while the peer is down.
	nodes[0].Close()
	p := waitPeer(t, obs, "n1", func(p PeerState) bool { return !p.Up })
	if p.Lan != lans[0] {
		t.Errorf("down peer's LAN %q", p.Lan)
	}
}

func TestListenBadLan(t *testing.T) {
	creds := credsFor(t, testSecret, "n1")
	for _, lan := range []string{"10.0.0.1", ":443", "host:0", "host:65536", "host:http", "a b:80", "[::1:80",
		strings.Repeat("h", maxFieldLen) + ":1"} {
		if n, err := Listen(Config{Name: "n1", TLS: creds, Addr: "127.0.0.1:0", Lan: lan}); err == nil {
			n.Close()
			t.Errorf("Lan %q accepted", lan)
		}
	}
	n, err := Listen(Config{Name: "n1", TLS: creds, Addr: "127.0.0.1:0", Lan: "cache-1.lan:443"})
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
}

func purgeFrom(sender string) func(Event) bool {
	return func(e Event) bool { return e.Kind == EventPurge && e.Peer == sender }
}

// TestPurge: a purge from a content node reaches every other node and the
// observer once; a purge from the observer, which nobody dials, reaches
// every node it dialled once.
func TestPurge(t *testing.T) {
	nodes := startCluster(t, []string{"n1", "n2", "n3"}, nil)
	waitUp(t, nodes)
	obs, obsRec := startObserver(t, "director", nodes)
	for _, n := range nodes {
		waitPeer(t, obs, n.Name(), func(p PeerState) bool { return p.Up })
		// The observer is subscribed once the node has sent its
		// snapshot.
		var i int
		obsRec.wait(t, &i, 5*time.Second, kind(EventSnapshot, n.Name()))
	}
	all := []*recorder{nodes[0].rec, nodes[1].rec, nodes[2].rec, obsRec}

	p := Purge{Group: "site", Path: "/img/a.png"}
	nodes[0].Purge(p)
	for k, rec := range all[1:] {
		var i int
		if e := rec.wait(t, &i, 2*time.Second, purgeFrom("n1")); e.Purge != p {
			t.Errorf("receiver %d got %+v", k+1, e.Purge)
		}
	}

	q := Purge{Group: "site", Path: "/css/", Prefix: true}
	obs.Purge(q)
	for k, rec := range all[:3] {
		var i int
		if e := rec.wait(t, &i, 2*time.Second, purgeFrom("director")); e.Purge != q {
			t.Errorf("node %d got %+v", k, e.Purge)
		}
	}

	// Exactly once: no second copy arrives on the other connection of a
	// pair, and nobody hears its own purge.
	time.Sleep(200 * time.Millisecond)
	for k, rec := range all {
		n1, dir := rec.count(purgeFrom("n1")), rec.count(purgeFrom("director"))
		wantN1, wantDir := 1, 1
		if k == 0 {
			wantN1 = 0
		}
		if k == 3 {
			wantDir = 0
		}
		if n1 != wantN1 || dir != wantDir {
			t.Errorf("receiver %d: %d purges from n1 (want %d), %d from director (want %d)", k, n1, wantN1, dir, wantDir)
		}
	}

	// Invalid purges are dropped, not sent.
	nodes[0].Purge(Purge{Group: "site", Path: strings.Repeat("p", maxPathLen+1)})
	time.Sleep(50 * time.Millisecond)
	if c := nodes[1].rec.count(purgeFrom("n1")); c != 1 {
		t.Errorf("%d purges from n1 after an invalid one", c)
	}
}

// TestPurgeOneWay: when only one connection of a pair is up, a purge uses
// it whichever side dialled.
func TestPurgeOneWay(t *testing.T) {
	// a lists b at an address where nothing answers; b lists a
	// correctly. Only b's connection to a comes up.
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().String()
	dead.Close()
	pcA, pcB := bindLoopback(t), bindLoopback(t)
	ra, rb := newRecorder(), newRecorder()
	na, err := Listen(Config{Name: "a", PacketConn: pcA, Peers: []Peer{{"b", deadAddr}}, TLS: credsFor(t, testSecret, "a"),
		OnEvent: ra.on, Logger: testLogger(t).Named("a")})
	if err != nil {
		t.Fatal(err)
	}
	defer na.Close()
	nb, err := Listen(Config{Name: "b", PacketConn: pcB, Peers: []Peer{{"a", pcA.LocalAddr().String()}}, TLS: credsFor(t, testSecret, "b"),
		OnEvent: rb.on, Logger: testLogger(t).Named("b")})
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	var i int
	rb.wait(t, &i, 5*time.Second, kind(EventSnapshot, "a"))
	if peerState(t, na, "b").Up {
		t.Fatal("a's connection to b is up")
	}

	// a → b over the connection b dialled; b → a over the same one, the
	// other way.
	na.Purge(Purge{Group: "g", Path: "/x"})
	nb.Purge(Purge{Group: "g", Path: "/y", Prefix: true})
	var j, k int
	if e := rb.wait(t, &j, 2*time.Second, purgeFrom("a")); e.Purge.Path != "/x" {
		t.Errorf("b got %+v", e.Purge)
	}
	if e := ra.wait(t, &k, 2*time.Second, purgeFrom("b")); e.Purge.Path != "/y" || !e.Purge.Prefix {
		t.Errorf("a got %+v", e.Purge)
	}
	time.Sleep(100 * time.Millisecond)
	if ra.count(purgeFrom("b")) != 1 || rb.count(purgeFrom("a")) != 1 {
		t.Error("a purge arrived twice")
	}
}
