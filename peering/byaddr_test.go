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
	"testing"
	"time"

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
