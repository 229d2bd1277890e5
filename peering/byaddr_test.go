package peering

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// testLeaf issues a leaf from ca with tweak applied to its template.
func testLeaf(t *testing.T, ca *x509.Certificate, caKey crypto.Signer, tweak func(*x509.Certificate)) tls.Certificate {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "leaf"},
		DNSNames:     []string{"anything.example"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if tweak != nil {
		tweak(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// TestVerifyAnyName: the check of a peer dialled by address accepts a leaf
// of the cluster CA whatever its DNS name, and refuses one of another CA,
// one without server auth, one expired, one without a DNS name, and none.
func TestVerifyAnyName(t *testing.T) {
	ca, caKey, err := CAFromSecret(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	other, otherKey := newTestCA(t, "other CA")
	creds := credsFor(t, testSecret, "n1")
	check := func(c tls.Certificate) error {
		return creds.verifyAnyName([]*x509.Certificate{c.Leaf}, x509.ExtKeyUsageServerAuth)
	}
	if err := check(testLeaf(t, ca, caKey, nil)); err != nil {
		t.Errorf("a cluster leaf with any name: %v", err)
	}
	if err := check(testLeaf(t, ca, caKey, func(c *x509.Certificate) { c.DNSNames = []string{"a", "b"} })); err != nil {
		t.Errorf("a cluster leaf with two names: %v", err)
	}
	for what, c := range map[string]tls.Certificate{
		"another CA's leaf": testLeaf(t, other, otherKey, nil),
		"client auth only": testLeaf(t, ca, caKey, func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}),
		"expired": testLeaf(t, ca, caKey, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		}),
		"no DNS name": testLeaf(t, ca, caKey, func(c *x509.Certificate) { c.DNSNames = nil }),
	} {
		if err := check(c); err == nil {
			t.Errorf("%s accepted", what)
		} else {
			t.Logf("%s: %v", what, err)
		}
	}
	if err := creds.verifyAnyName(nil, x509.ExtKeyUsageServerAuth); !errors.Is(err, errNoPeerCert) {
		t.Errorf("no certificate: %v", err)
	}
}

// deadAddr returns a loopback UDP address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	pc := bindLoopback(t)
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// named matches EventNamed for name at addr.
func named(name, addr string) func(Event) bool {
	return func(e Event) bool { return e.Kind == EventNamed && e.Peer == name && e.Addr == addr }
}

// TestByAddr: n1 knows n2 and n3 only by address: it learns their names
// (EventNamed, then EventUp and the snapshot under the name), fetches from
// them by name, and lists them in Peers() with the learned names; an
// address where nothing answers stays listed without a name.
func TestByAddr(t *testing.T) {
	t.Parallel()
	n2 := listenNode(t, "n2", bindLoopback(t), nil, nil)
	n3 := listenNode(t, "n3", bindLoopback(t), nil, nil)
	n2.backend.put("g", Meta{Path: "/2", Version: "1"}, []byte("from n2"))
	n3.backend.put("g", Meta{Path: "/3", Version: "1"}, []byte("from n3"))
	dead := deadAddr(t)
	n1 := listenNode(t, "n1", bindLoopback(t), []Peer{{"", n2.addr}, {"", dead}, {"", n3.addr}}, nil)

	for _, o := range []*testNode{n2, n3} {
		var i int
		e := n1.rec.wait(t, &i, 5*time.Second, func(e Event) bool { return e.Peer == o.Name() })
		if e.Kind != EventNamed || e.Addr != o.addr {
			t.Fatalf("first event of %s: %+v, want EventNamed at %s", o.Name(), e, o.addr)
		}
		n1.rec.wait(t, &i, 5*time.Second, kind(EventUp, o.Name()))
		snap := n1.rec.wait(t, &i, 5*time.Second, kind(EventSnapshot, o.Name()))
		if len(snap.Snapshot) != 1 || snap.Snapshot[0].Items[0].Path != "/"+o.Name()[1:] {
			t.Fatalf("snapshot of %s: %+v", o.Name(), snap.Snapshot)
		}
		if n := n1.rec.count(named(o.Name(), o.addr)); n != 1 {
			t.Errorf("%d EventNamed for %s", n, o.Name())
		}
	}
	for _, o := range []*testNode{n2, n3} {
		want := "from " + o.Name()
		if _, got, err := n1.Fetch(context.Background(), o.Name(), Request{Group: "g", Path: "/" + o.Name()[1:]}); err != nil || string(got) != want {
			t.Fatalf("fetch from %s: %q %v", o.Name(), got, err)
		}
		// The other side sees an ordinary subscriber.
		if subscribed(o.Node, "n1") != 1 {
			t.Errorf("n1 subscribed %d times to %s", subscribed(o.Node, "n1"), o.Name())
		}
	}
	ps := n1.Peers()
	if len(ps) != 3 {
		t.Fatalf("peers %+v", ps)
	}
	for i, want := range []struct {
		name, addr string
		up         bool
	}{{"n2", n2.addr, true}, {"", dead, false}, {"n3", n3.addr, true}} {
		p := ps[i]
		if p.Name != want.name || p.Addr != want.addr || p.Up != want.up || p.Discovered != (want.name != "") {
			t.Errorf("peer %d: %+v, want %+v", i, p, want)
		}
		if want.name != "" {
			if up, ready := n1.PeerUp(want.name); up != p.Up || ready != p.Ready {
				t.Errorf("PeerUp(%q) = %v, %v; Peers says %v, %v", want.name, up, ready, p.Up, p.Ready)
			}
		}
	}
	if up, ready := n1.PeerUp(""); up || ready {
		t.Errorf("PeerUp(\"\") = %v, %v", up, ready)
	}
	if _, _, err := n1.Fetch(context.Background(), "", Request{Group: "g", Path: "/2"}); !errors.Is(err, ErrPeerDown) {
		t.Errorf("fetch from the name \"\": %v", err)
	}
}

// TestByAddrOtherCA: a node at an address listed without a name whose
// certificate is from another CA is refused by the dialler's own check
// (the node trusts the cluster CA, so it would accept n1): no name learned,
// no event, no subscription. A cluster node listed alongside is learned.
func TestByAddrOtherCA(t *testing.T) {
	t.Parallel()
	clusterCA, _, err := CAFromSecret(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	other, otherKey := newTestCA(t, "other CA")
	evilCreds, err := NewCredentials(testLeaf(t, other, otherKey, func(c *x509.Certificate) { c.DNSNames = []string{"evil"} }), other, clusterCA)
	if err != nil {
		t.Fatal(err)
	}
	evil := listenNode(t, "evil", bindLoopback(t), nil, func(c *Config) { c.TLS = evilCreds })
	n2 := listenNode(t, "n2", bindLoopback(t), nil, nil)
	logger, logs := observed(t)
	n1 := listenNode(t, "n1", bindLoopback(t), []Peer{{"", evil.addr}, {"", n2.addr}}, func(c *Config) { c.Logger = logger })

	var i int
	n1.rec.wait(t, &i, 5*time.Second, kind(EventUp, "n2"))
	time.Sleep(300 * time.Millisecond) // several dials of evil
	if n := n1.rec.count(func(e Event) bool { return e.Peer != "n2" }); n != 0 {
		t.Fatalf("%d events from others than n2", n)
	}
	if p := n1.Peers()[0]; p.Name != "" || p.Up || p.Discovered {
		t.Fatalf("evil's entry: %+v", p)
	}
	if subscribed(evil.Node, "n1") != 0 {
		t.Fatal("n1 subscribed to evil")
	}
	failed := logged(logs, zapcore.WarnLevel, "dialling peer failed; retrying")
	if len(failed) != 1 || fieldOf(failed[0], "peer_addr") != evil.addr {
		t.Fatalf("failed dials logged: %+v", failed)
	}
	t.Logf("refused: %s", failed[0].ContextMap()["error"])
	if _, _, err := n1.Fetch(context.Background(), "evil", Request{Group: "g", Path: "/x"}); !errors.Is(err, ErrPeerDown) {
		t.Fatalf("fetch from evil: %v", err)
	}
}

// TestByAddrSelf: n1's own address in its list is dialled once, found to
// be n1 itself, logged, and not dialled again; no event, no name.
func TestByAddrSelf(t *testing.T) {
	t.Parallel()
	n2 := listenNode(t, "n2", bindLoopback(t), nil, nil)
	pc := bindLoopback(t)
	self := pc.LocalAddr().String()
	logger, logs := observed(t)
	n1 := listenNode(t, "n1", pc, []Peer{{"", self}, {"", n2.addr}}, func(c *Config) { c.Logger = logger })

	var i int
	n1.rec.wait(t, &i, 5*time.Second, kind(EventUp, "n2"))
	deadline := time.Now().Add(5 * time.Second)
	const msg = "the node listed at this address is this node itself; not dialled again while listed"
	for len(logged(logs, zapcore.WarnLevel, msg)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("self not recognised")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // ten minimal backoffs
	w := logged(logs, zapcore.WarnLevel, msg)
	if len(w) != 1 || fieldOf(w[0], "peer_addr") != self || fieldOf(w[0], "addr") != self || fieldOf(w[0], "name") != "n1" {
		t.Fatalf("logged %+v", w)
	}
	if n := len(logs.FilterMessage("peer subscribed").FilterField(zap.String("peer", "n1")).All()); n != 1 {
		t.Errorf("n1 accepted its own HELLO %d times, want once (no re-dial)", n)
	}
	if subscribed(n1.Node, "n1") != 0 {
		t.Error("n1's connection to itself still open")
	}
	if n := n1.rec.count(func(e Event) bool { return e.Peer == "n1" }); n != 0 {
		t.Errorf("%d events about n1 itself", n)
	}
	if p := n1.Peers()[0]; p.Name != "" || p.Up || p.Addr != self {
		t.Errorf("own entry: %+v", p)
	}
}

// TestByAddrConflict: a node listed by address whose name a configured peer
// has (two nodes named n2), or that another address already answers under
// on a live connection (two nodes named n3), is logged with both addresses
// and not tracked twice: its connection is closed, no event, one entry per
// name in Peers(), and Fetch reaches the node that holds the name.
func TestByAddrConflict(t *testing.T) {
	t.Parallel()
	n2a := listenNode(t, "n2", bindLoopback(t), nil, nil)
	n2b := listenNode(t, "n2", bindLoopback(t), nil, nil)
	n3a := listenNode(t, "n3", bindLoopback(t), nil, nil)
	n3b := listenNode(t, "n3", bindLoopback(t), nil, nil)
	for _, o := range []*testNode{n2a, n2b, n3a, n3b} {
		o.backend.put("g", Meta{Path: "/x", Version: "1"}, []byte(o.addr))
	}
	logger, logs := observed(t)
	n1 := listenNode(t, "n1", bindLoopback(t), []Peer{{"n2", n2a.addr}, {"", n2b.addr}, {"", n3a.addr}}, func(c *Config) { c.Logger = logger })
	var i int
	n1.rec.wait(t, &i, 5*time.Second, kind(EventUp, "n3"))
	// n3b appears once n3a holds the name.
	n1.SetPeers([]Peer{{"n2", n2a.addr}, {"", n2b.addr}, {"", n3a.addr}, {"", n3b.addr}})

	const msg = "the node listed at this address is tracked already under its name; not tracked twice"
	deadline := time.Now().Add(5 * time.Second)
	for len(logged(logs, zapcore.WarnLevel, msg)) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("conflicts logged: %+v", logged(logs, zapcore.WarnLevel, msg))
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := map[string]string{}
	for _, e := range logged(logs, zapcore.WarnLevel, msg) {
		got[fieldOf(e, "peer_addr")] = fieldOf(e, "name") + "@" + fieldOf(e, "other_addr")
	}
	if got[n2b.addr] != "n2@"+n2a.addr || got[n3b.addr] != "n3@"+n3a.addr || len(got) != 2 {
		t.Fatalf("conflicts logged: %v", got)
	}
	for _, dup := range []*testNode{n2b, n3b} {
		deadline := time.Now().Add(2 * time.Second)
		for subscribed(dup.Node, "n1") != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("n1's connection to the duplicate at %s still open", dup.addr)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if n := n1.rec.count(func(e Event) bool { return e.Kind == EventNamed }); n != 1 {
		t.Errorf("%d EventNamed, want 1 (n3a)", n)
	}
	if n := n1.rec.count(kind(EventUp, "n2")) + n1.rec.count(kind(EventUp, "n3")); n != 2 {
		t.Errorf("%d EventUp, want 2", n)
	}
	if n := n1.rec.count(func(e Event) bool { return e.Kind == EventDown }); n != 0 {
		t.Errorf("%d EventDown", n)
	}
	ps := n1.Peers()
	want := []PeerState{{Name: "n2", Addr: n2a.addr}, {Addr: n2b.addr}, {Name: "n3", Addr: n3a.addr, Discovered: true}, {Addr: n3b.addr}}
	for k, p := range ps {
		if p.Name != want[k].Name || p.Addr != want[k].Addr || p.Discovered != want[k].Discovered || p.Up != (p.Name != "") {
			t.Errorf("peer %d: %+v, want %+v", k, p, want[k])
		}
	}
	for name, holder := range map[string]*testNode{"n2": n2a, "n3": n3a} {
		if _, b, err := n1.Fetch(context.Background(), name, Request{Group: "g", Path: "/x"}); err != nil || string(b) != holder.addr {
			t.Errorf("fetch from %s: %q %v, want the node at %s", name, b, err, holder.addr)
		}
	}
}

// TestByAddrRestartOtherName: another node starts at the address of a peer
// listed by address (n3 stops, n4 starts there): EventDown for n3, then
// EventNamed and EventUp for n4; n3 is gone from Peers() and Fetch, n4
// fetchable.
func TestByAddrRestartOtherName(t *testing.T) {
	t.Parallel()
	n3 := listenNode(t, "n3", bindLoopback(t), nil, nil)
	n1 := listenNode(t, "n1", bindLoopback(t), []Peer{{"", n3.addr}}, nil)
	var i int
	n1.rec.wait(t, &i, 5*time.Second, named("n3", n3.addr))
	n1.rec.wait(t, &i, 5*time.Second, kind(EventSnapshot, "n3"))

	n3.Close()
	e := n1.rec.wait(t, &i, 3*time.Second, func(e Event) bool { return e.Kind != EventPurge && e.Kind != EventSync && e.Kind != EventTOC })
	if e.Kind != EventDown || e.Peer != "n3" {
		t.Fatalf("event after n3 stopped: %+v", e)
	}
	if p := n1.Peers()[0]; p.Name != "n3" || p.Up || !p.Discovered {
		t.Fatalf("n3 down: %+v", p)
	}
	if up, _ := n1.PeerUp("n3"); up {
		t.Fatal("PeerUp: n3 up after it stopped")
	}
	pc, err := net.ListenPacket("udp", n3.addr)
	if err != nil {
		t.Fatal(err)
	}
	n4 := listenNode(t, "n4", pc, nil, nil)
	n4.backend.put("g", Meta{Path: "/x", Version: "1"}, []byte("n4"))
	for _, want := range []func(Event) bool{named("n4", n3.addr), kind(EventUp, "n4"), kind(EventSnapshot, "n4")} {
		e := n1.rec.wait(t, &i, 5*time.Second, func(e Event) bool { return e.Kind != EventPurge && e.Kind != EventSync && e.Kind != EventTOC })
		if !want(e.Event) {
			t.Fatalf("unexpected event %+v", e)
		}
	}
	if p := n1.Peers()[0]; p.Name != "n4" || !p.Up || !p.Discovered || p.Addr != n3.addr {
		t.Fatalf("n4 up: %+v", p)
	}
	if up, _ := n1.PeerUp("n4"); !up {
		t.Fatal("PeerUp: n4 not up")
	}
	if up, _ := n1.PeerUp("n3"); up {
		t.Fatal("PeerUp: n3 up, its address taken by n4")
	}
	if _, b, err := n1.Fetch(context.Background(), "n4", Request{Group: "g", Path: "/x"}); err != nil || string(b) != "n4" {
		t.Fatalf("fetch from n4: %q %v", b, err)
	}
	if _, _, err := n1.Fetch(context.Background(), "n3", Request{Group: "g", Path: "/x"}); !errors.Is(err, ErrPeerDown) {
		t.Fatalf("fetch from n3: %v", err)
	}
	if n := n1.rec.count(kind(EventDown, "n3")); n != 1 {
		t.Errorf("%d EventDown for n3", n)
	}
}

// TestByAddrThenNamed: SetPeers replacing an entry by address with a named
// one for the same address and the learned name keeps the connection (no
// event); naming at another address a name an entry by address holds
// moves the name there: the old connection's EventDown comes first, and
// the entry by address is not tracked under that name again.
func TestByAddrThenNamed(t *testing.T) {
	t.Parallel()
	n2 := listenNode(t, "n2", bindLoopback(t), nil, nil)
	c1 := listenNode(t, "c", bindLoopback(t), nil, nil)
	c2 := listenNode(t, "c", bindLoopback(t), nil, nil)
	c1.backend.put("g", Meta{Path: "/x", Version: "1"}, []byte("c1"))
	c2.backend.put("g", Meta{Path: "/x", Version: "1"}, []byte("c2"))
	n1 := listenNode(t, "n1", bindLoopback(t), []Peer{{"", n2.addr}, {"", c1.addr}}, nil)
	var i, j int
	n1.rec.wait(t, &i, 5*time.Second, kind(EventSnapshot, "n2"))
	n1.rec.wait(t, &j, 5*time.Second, kind(EventSnapshot, "c"))
	conn := dialled(n1.Node, "n2")

	// n2 by name at the same address: same connection, no event.
	n1.rec.mu.Lock()
	before := len(n1.rec.events)
	n1.rec.mu.Unlock()
	n1.SetPeers([]Peer{{"n2", n2.addr}, {"", c1.addr}})
	if p := peerState(t, n1.Node, "n2"); !p.Up || p.Discovered {
		t.Fatalf("n2 named: %+v", p)
	}
	if dialled(n1.Node, "n2") != conn {
		t.Fatal("n2 re-dialled")
	}
	// c named at c2's address: c1's connection ends first.
	n1.SetPeers([]Peer{{"n2", n2.addr}, {"", c1.addr}, {"c", c2.addr}})
	for _, want := range []func(Event) bool{kind(EventDown, "c"), kind(EventUp, "c"), kind(EventSnapshot, "c")} {
		e := n1.rec.wait(t, &j, 5*time.Second, func(e Event) bool {
			return e.Peer == "c" && e.Kind != EventPurge && e.Kind != EventSync && e.Kind != EventTOC
		})
		if !want(e.Event) {
			t.Fatalf("unexpected event %+v", e)
		}
	}
	if _, b, err := n1.Fetch(context.Background(), "c", Request{Group: "g", Path: "/x"}); err != nil || string(b) != "c2" {
		t.Fatalf("fetch from c: %q %v", b, err)
	}
	time.Sleep(200 * time.Millisecond) // c1 re-dialled: a duplicate now
	ps := n1.Peers()
	if len(ps) != 3 || ps[1].Addr != c1.addr || ps[1].Name != "" || ps[1].Up || ps[2].Name != "c" || !ps[2].Up {
		t.Fatalf("peers %+v", ps)
	}
	if dialled(n1.Node, "n2") != conn {
		t.Fatal("n2 re-dialled")
	}
	n1.rec.mu.Lock()
	for _, e := range n1.rec.events[before:] {
		if e.Peer == "n2" && e.Kind != EventPurge {
			t.Errorf("event about n2: %+v", e)
		}
	}
	n1.rec.mu.Unlock()
	if n := n1.rec.count(func(e Event) bool { return e.Kind == EventNamed }); n != 2 {
		t.Errorf("%d EventNamed, want 2 (n2 and c at c1, once each)", n)
	}
}

// TestByAddrHelloNotInCert: a node listed by address whose HELLO carries a
// name its certificate does not hold (a cluster leaf for "mallory" saying
// it is n2) is refused with CloseBadIdentity: no name learned, no event.
func TestByAddrHelloNotInCert(t *testing.T) {
	t.Parallel()
	pc := bindLoopback(t)
	tr := &quic.Transport{Conn: pc}
	t.Cleanup(func() { tr.Close(); pc.Close() })
	ln, err := tr.Listen(credsFor(t, testSecret, "mallory").ServerConfig(), quicConfig(DefaultIdleTimeout))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	n1 := listenNode(t, "n1", bindLoopback(t), []Peer{{"", pc.LocalAddr().String()}}, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	str, err := conn.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if typ, _, err := readFrame(str, nil); err != nil || typ != frameHello {
		t.Fatalf("first frame: %v %v", typ, err)
	}
	b, _ := appendHello(nil, &hello{Name: "n2"})
	str.Write(b)
	select {
	case <-conn.Context().Done():
	case <-ctx.Done():
		t.Fatal("connection not closed")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(conn.Context()); !errors.As(err, &ae) || ae.ErrorCode != CloseBadIdentity || !ae.Remote {
		t.Fatalf("closed with %v, want CloseBadIdentity from n1", err)
	}
	if n := n1.rec.count(func(Event) bool { return true }); n != 0 {
		t.Fatalf("%d events", n)
	}
	if p := n1.Peers()[0]; p.Name != "" || p.Up {
		t.Fatalf("entry: %+v", p)
	}
}

// TestNormPeers: entries by address only are kept once per address, left
// out when a named entry has their address, and refused without one.
func TestNormPeers(t *testing.T) {
	out, bad := normPeers("self", []Peer{
		{"", "a:1"}, {"n2", "b:1"}, {"", "b:1"}, {"", "a:1"}, {"self", "c:1"}, {"", ""}, {"n3", ""}, {"n2", "d:1"}, {"", "e:1"},
	})
	if want := []Peer{{"", "a:1"}, {"n2", "b:1"}, {"", "e:1"}}; !slices.Equal(out, want) {
		t.Errorf("kept %v, want %v", out, want)
	}
	var got []Peer
	for _, b := range bad {
		got = append(got, b.Peer)
	}
	if want := []Peer{{"", "a:1"}, {"", ""}, {"n3", ""}, {"n2", "d:1"}}; !slices.Equal(got, want) {
		t.Errorf("refused %v, want %v", got, want)
	}
	if _, err := checkPeers("self", []Peer{{"", "a:1"}, {"", "a:1"}}); err == nil {
		t.Error("Listen accepts an address listed twice")
	}
}
