package peering

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// observed returns a logger that records what is logged at INFO and above
// (and also logs to the test's logger in verbose mode).
func observed(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.InfoLevel)
	return zap.New(zapcore.NewTee(core, testLogger(t).Core())), logs
}

// logged counts the entries at level whose message contains msg.
func logged(logs *observer.ObservedLogs, level zapcore.Level, msg string) []observer.LoggedEntry {
	return logs.Filter(func(e observer.LoggedEntry) bool {
		return e.Level == level && e.Message == msg
	}).All()
}

// fieldOf returns the string value of the field key of e.
func fieldOf(e observer.LoggedEntry, key string) string {
	if v, ok := e.ContextMap()[key]; ok {
		if s, ok := v.(string); ok {
			return s
		}
		if s, ok := v.(interface{ String() string }); ok {
			return s.String()
		}
	}
	return ""
}

// wellBehaved checks that n2 still fetches from n1 and n1 from n2.
func wellBehaved(t *testing.T, nodes []*testNode) {
	t.Helper()
	nodes[0].backend.put("g", Meta{Path: "/ok", Version: "1"}, []byte("ok"))
	nodes[1].backend.put("g", Meta{Path: "/ok", Version: "1"}, []byte("ok"))
	for i, n := range nodes[:2] {
		other := nodes[1-i].Name()
		if _, b, err := n.Fetch(context.Background(), other, Request{Group: "g", Path: "/ok"}); err != nil || string(b) != "ok" {
			t.Fatalf("%s fetching from %s: %q %v", n.Name(), other, b, err)
		}
	}
}

// rawGet sends a GET on a new stream of conn and returns the status.
func rawGet(t *testing.T, conn *quic.Conn, path string) (quic.StreamErrorCode, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return 0, err
	}
	b, _ := appendGet(nil, &Request{Group: "g", Path: path})
	if err := writeFin(str, b); err != nil {
		return 0, err
	}
	str.SetReadDeadline(time.Now().Add(3 * time.Second))
	ft, p, err := readFrame(str, nil)
	if err != nil {
		return 0, err
	}
	if ft != frameResponse {
		return 0, errUnexpected
	}
	status, _, err := decodeResponse(p)
	return status, err
}

// TestHelloFirstStreamOnly: a connection's control stream is its first
// stream; a HELLO on any later one is refused with a reset (logged once
// per connection), and the connection keeps serving.
func TestHelloFirstStreamOnly(t *testing.T) {
	t.Parallel()
	log, logs := observed(t)
	nodes := startCluster(t, []string{"n1", "n2"}, func(i int, c *Config) {
		if i == 0 {
			c.Logger = log
		}
	})
	waitUp(t, nodes)
	conn, err := dialRaw(t, nodes[0].addr, credsFor(t, testSecret, "mallory").ClientConfig("n1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	hl, _ := appendHello(nil, &hello{Name: "mallory"})
	for i := range 4 {
		str, err := conn.OpenStreamSync(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := str.Write(hl); err != nil {
			t.Fatal(err)
		}
		str.SetReadDeadline(time.Now().Add(3 * time.Second))
		ft, _, err := readFrame(str, nil)
		if i == 0 {
			if err != nil || ft != frameHello {
				t.Fatalf("first stream: %v %v, want the node's HELLO", ft, err)
			}
			continue
		}
		var se *quic.StreamError
		if !errors.As(err, &se) || se.ErrorCode != ErrCodeBadRequest || !se.Remote {
			t.Fatalf("HELLO on stream %d: %v, want a reset with ErrCodeBadRequest", str.StreamID(), err)
		}
	}
	if c := subscribed(nodes[0].Node, "mallory"); c != 1 {
		t.Errorf("%d subscriptions from one connection", c)
	}
	if status, err := rawGet(t, conn, "/nothing"); err != nil || status != ErrCodeNotFound {
		t.Errorf("GET after refused HELLOs: %v %v", status, err)
	}
	wellBehaved(t, nodes)
	w := logged(logs, zapcore.WarnLevel, "peer sent a HELLO on a stream other than its first; refused")
	_, port, _ := net.SplitHostPort(conn.LocalAddr().String())
	if len(w) != 1 || fieldOf(w[0], "peer") != "mallory" || !strings.HasSuffix(fieldOf(w[0], "peer_addr"), ":"+port) {
		t.Errorf("logged %d times: %+v", len(w), w)
	}
}

// TestMalformedHelloLogged: a HELLO that breaks the protocol (here a
// State with duplicate groups) closes the connection with
// CloseProtocolError and a log line naming the peer.
func TestMalformedHelloLogged(t *testing.T) {
	t.Parallel()
	log, logs := observed(t)
	nodes := startCluster(t, []string{"n1"}, func(i int, c *Config) { c.Logger = log })
	conn, err := dialRaw(t, nodes[0].addr, credsFor(t, testSecret, "mallory").ClientConfig("n1"))
	if err != nil {
		t.Fatal(err)
	}
	b, start := beginFrame(nil, frameHello)
	b = appendStr(b, "mallory")
	b = append(b, 0)
	b = appendStr(b, "")
	b = appendState(b, &State{Groups: []GroupState{{Name: "a"}, {Name: "a"}}})
	b, _ = endFrame(b, start)
	str, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	str.Write(b)
	str.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, _, err = readFrame(str, nil)
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || ae.ErrorCode != CloseProtocolError {
		t.Fatalf("got %v, want CloseProtocolError", err)
	}
	w := logged(logs, zapcore.WarnLevel, "peer sent a malformed HELLO; closing the connection")
	if len(w) != 1 || fieldOf(w[0], "peer") != "mallory" {
		t.Fatalf("logged %+v", w)
	}
	t.Logf("logged: %s %v", w[0].Message, w[0].ContextMap())
}

// TestConnsPerName: past maxConnsPerName connections from one certificate
// name, a new one is closed with CloseTooManyConns (and logged); those
// already open keep working, a slot freed is reused, and other peers are
// not affected.
func TestConnsPerName(t *testing.T) {
	t.Parallel()
	log, logs := observed(t)
	nodes := startCluster(t, []string{"n1", "n2"}, func(i int, c *Config) {
		if i == 0 {
			c.Logger = log
		}
	})
	nodes[0].backend.put("g", Meta{Path: "/x"}, []byte("x"))
	waitUp(t, nodes)
	creds := credsFor(t, testSecret, "mallory")
	var conns []*quic.Conn
	defer func() {
		for _, c := range conns {
			c.CloseWithError(0, "")
		}
	}()
	for range maxConnsPerName {
		c, err := dialRaw(t, nodes[0].addr, creds.ClientConfig("n1"))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// Served: the connection is accepted before its first request
		// is answered.
		if status, err := rawGet(t, c, "/x"); err != nil || status != ErrCodeNoError {
			t.Fatalf("connection %d: %v %v", len(conns), status, err)
		}
	}
	over := func() {
		t.Helper()
		c, err := dialRaw(t, nodes[0].addr, creds.ClientConfig("n1"))
		if err != nil {
			t.Fatalf("dial: %v", err) // the handshake completes; the close follows
		}
		defer c.CloseWithError(0, "")
		select {
		case <-c.Context().Done():
		case <-time.After(3 * time.Second):
			t.Fatal("connection over the limit still open")
		}
		var ae *quic.ApplicationError
		if err := context.Cause(c.Context()); !errors.As(err, &ae) || ae.ErrorCode != CloseTooManyConns || !ae.Remote {
			t.Fatalf("connection over the limit ended with %v, want CloseTooManyConns", err)
		}
	}
	over()
	for i, c := range conns {
		if status, err := rawGet(t, c, "/x"); err != nil || status != ErrCodeNoError {
			t.Fatalf("connection %d after the refusal: %v %v", i, status, err)
		}
	}
	wellBehaved(t, nodes)
	w := logged(logs, zapcore.WarnLevel, "too many connections from one peer name; closing the new one")
	if len(w) != 1 || fieldOf(w[0], "peer") != "mallory" {
		t.Fatalf("logged %+v", w)
	}

	// Closing one frees its slot.
	conns[0].CloseWithError(0, "")
	deadline := time.Now().Add(3 * time.Second)
	for {
		nodes[0].mu.Lock()
		c := nodes[0].perName["mallory"]
		nodes[0].mu.Unlock()
		if c == maxConnsPerName-1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections counted", c)
		}
		time.Sleep(5 * time.Millisecond)
	}
	c, err := dialRaw(t, nodes[0].addr, creds.ClientConfig("n1"))
	if err != nil {
		t.Fatal(err)
	}
	conns[0] = c
	if status, err := rawGet(t, c, "/x"); err != nil || status != ErrCodeNoError {
		t.Fatalf("connection in a freed slot: %v %v", status, err)
	}
	over()
}

// deafConn sends what it is given and reads nothing: a client that sends
// Initial packets and never answers, as from a spoofed address.
type deafConn struct {
	net.PacketConn
}

func (c deafConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		if _, _, err := c.PacketConn.ReadFrom(b); err != nil {
			return 0, nil, err
		}
	}
}

// TestHandshakeFlood: while more than maxHandshakes handshakes are in
// progress (a flood of Initial packets from a client without a
// certificate that never answers), new connections must validate their
// source address with a Retry (logged once); a legitimate peer still
// connects at once, and validation turns off once the flood's handshakes
// have timed out.
//
// Not parallel: the flood takes the CPU from the timing-sensitive tests.
func TestHandshakeFlood(t *testing.T) {
	log, logs := observed(t)
	nodes := startCluster(t, []string{"n1"}, func(i int, c *Config) { c.Logger = log })
	n1 := nodes[0]

	flood := &quic.Transport{Conn: deafConn{bindLoopback(t)}}
	defer flood.Close()
	tc := credsFor(t, testSecret, "flood").ClientConfig("n1")
	tc.Certificates = nil
	tc.CurvePreferences = []tls.CurveID{tls.X25519} // cheaper than the default post-quantum key share
	addr, _ := net.ResolveUDPAddr("udp", n1.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	start := time.Now()
	for range 2 * maxHandshakes {
		wg.Go(func() { flood.Dial(ctx, addr, tc, quicConfig(DefaultIdleTimeout)) })
	}
	deadline := time.Now().Add(5 * time.Second)
	for !n1.validating.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("validation not on; %d handshakes in progress", n1.handshakes.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("validation on after %v: %d handshakes in progress", time.Since(start), n1.handshakes.Load())

	// A legitimate peer connects, through a Retry.
	start = time.Now()
	n2 := listenNode(t, "n2", bindLoopback(t), []Peer{{"n1", n1.addr}}, nil)
	var i int
	n2.rec.wait(t, &i, 2*time.Second, kind(EventUp, "n1"))
	t.Logf("legitimate peer up after %v during the flood", time.Since(start))
	if !n1.validating.Load() {
		t.Error("validation turned off during the flood")
	}
	if h := n1.handshakes.Load(); h > maxHandshakes+8 {
		t.Errorf("%d handshakes in progress: the flood got past the validation", h)
	}
	if w := logged(logs, zapcore.WarnLevel, "too many handshakes in progress: new connections must validate their source address (Retry)"); len(w) != 1 {
		t.Errorf("logged %d times", len(w))
	}

	// The flood's handshakes time out (HandshakeIdleTimeout) and
	// validation turns off.
	cancel()
	deadline = time.Now().Add(4 * time.Second)
	for n1.validating.Load() || n1.handshakes.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("validation still on; %d handshakes in progress", n1.handshakes.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if w := logged(logs, zapcore.InfoLevel, "handshakes in progress back to normal; source-address validation off"); len(w) != 1 {
		t.Errorf("logged %d times", len(w))
	}
}

// TestPurgeEmptyPrefixRefused: a purge of a whole group (an empty prefix)
// is not sent by Node.Purge and, from a peer that sends it anyway, raises
// no event (logged once per stream, naming the peer); purges after it
// still arrive.
func TestPurgeEmptyPrefixRefused(t *testing.T) {
	t.Parallel()
	log, logs := observed(t)
	nodes := startCluster(t, []string{"n1", "n2"}, func(i int, c *Config) {
		if i == 0 {
			c.Logger = log
		}
	})
	waitUp(t, nodes)
	var i int
	nodes[0].rec.wait(t, &i, 2*time.Second, kind(EventSnapshot, "n2"))

	// Node.Purge sends nothing.
	nodes[1].Purge(Purge{Group: "g", Prefix: true})
	nodes[1].Purge(Purge{Group: "g", Path: "/marker"})
	if e := nodes[0].rec.wait(t, &i, 2*time.Second, purgeFrom("n2")); e.Purge.Path != "/marker" {
		t.Fatalf("first purge from n2: %+v", e.Purge)
	}

	// A peer that sends it anyway, twice.
	conn, err := dialRaw(t, nodes[0].addr, credsFor(t, testSecret, "mallory").ClientConfig("n1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	str, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := appendHello(nil, &hello{Name: "mallory", Observer: true})
	for _, p := range []Purge{{Group: "g", Prefix: true}, {Group: "h", Prefix: true}, {Group: "g", Path: "/after"}} {
		b, _ = appendPurge(b, &p)
	}
	if _, err := str.Write(b); err != nil {
		t.Fatal(err)
	}
	if e := nodes[0].rec.wait(t, &i, 2*time.Second, purgeFrom("mallory")); e.Purge.Path != "/after" {
		t.Fatalf("first purge from mallory: %+v", e.Purge)
	}
	if c := nodes[0].rec.count(purgeFrom("mallory")) + nodes[0].rec.count(purgeFrom("n2")); c != 2 {
		t.Errorf("%d purge events, want 2", c)
	}
	w := logged(logs, zapcore.WarnLevel, "peer asked to purge a whole group (empty prefix); ignored")
	if len(w) != 1 || fieldOf(w[0], "peer") != "mallory" || fieldOf(w[0], "group") != "g" {
		t.Errorf("logged %+v", w)
	}
	// The connection is still served.
	if status, err := rawGet(t, conn, "/nothing"); err != nil || status != ErrCodeNotFound {
		t.Errorf("GET after the refused purges: %v %v", status, err)
	}
}

// TestSnapshotBound: a peer whose snapshot lists more than maxSnapshotItems
// items (lowered here) is cut off as a protocol error before its snapshot
// grows further, logged naming it; it is still served.
func TestSnapshotBound(t *testing.T) {
	t.Parallel()
	log, logs := observed(t)
	pcA, pcB := bindLoopback(t), bindLoopback(t)
	peerA, peerB := Peer{"a", pcA.LocalAddr().String()}, Peer{"b", pcB.LocalAddr().String()}
	a := listenNode(t, "a", pcA, []Peer{peerB}, nil)
	for i := range 3000 { // several frames
		a.backend.put("site", sampleMeta(i), nil)
	}
	b := listenNode(t, "b", pcB, nil, func(c *Config) { c.Logger = log })
	b.backend.put("g", Meta{Path: "/ok"}, []byte("ok"))
	b.maxSnapshot = 1000
	b.SetPeers([]Peer{peerA})

	deadline := time.Now().Add(3 * time.Second)
	for {
		w := logs.FilterMessage("peer down").FilterField(zap.String("peer", "a")).All()
		if len(w) > 0 {
			if err, _ := w[0].ContextMap()["error"].(string); !strings.Contains(err, "snapshot of more than 1000 items") {
				t.Fatalf("logged %v", w[0].ContextMap())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no log of the refused snapshot")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c := b.rec.count(kind(EventSnapshot, "a")); c != 0 {
		t.Errorf("%d snapshots delivered", c)
	}
	// a, whose connection to b is not affected, still fetches from it.
	waitPeer(t, a.Node, "b", func(p PeerState) bool { return p.Up })
	if _, got, err := a.Fetch(context.Background(), "b", Request{Group: "g", Path: "/ok"}); err != nil || string(got) != "ok" {
		t.Fatalf("fetch: %q %v", got, err)
	}
}
