package peering

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/zap"
)

const testSecret = "correct horse battery staple"

func TestCAFromSecretDeterministic(t *testing.T) {
	a, ka, err := CAFromSecret(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	b, kb, err := CAFromSecret(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Raw, b.Raw) {
		t.Fatal("same secret, different CA DER")
	}
	if !a.IsCA || a.NotBefore.Year() != 2024 || a.SerialNumber.Int64() != 1 {
		t.Errorf("CA fields: IsCA %v NotBefore %v serial %v", a.IsCA, a.NotBefore, a.SerialNumber)
	}
	if !bytes.Equal(ka.Public().(ed25519.PublicKey), kb.Public().(ed25519.PublicKey)) {
		t.Error("same secret, different key")
	}
	c, _, err := CAFromSecret(testSecret + "!")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a.Raw, c.Raw) {
		t.Fatal("different secrets, same CA")
	}
	if _, _, err := CAFromSecret("short"); err == nil {
		t.Error("short secret accepted")
	}
}

func TestIssueLeaf(t *testing.T) {
	ca, key, err := CAFromSecret(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := IssueLeaf(ca, key, "n1")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: "n1", Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("leaf does not verify for %v: %v", usage, err)
		}
	}
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: "n2", Roots: pool}); err == nil {
		t.Error("leaf verifies for another name")
	}
	if d := time.Until(leaf.Leaf.NotAfter); d < 360*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("leaf valid for %v", d)
	}
	other, _, _ := CAFromSecret("another secret of some length")
	opool := x509.NewCertPool()
	opool.AddCert(other)
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: opool}); err == nil {
		t.Error("leaf verifies against another cluster's CA")
	}
}

func TestCredentialsFromFiles(t *testing.T) {
	ca, key, _ := CAFromSecret(testSecret)
	leaf, _ := IssueLeaf(ca, key, "n7")
	dir := t.TempDir()
	keyDER, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certFile := write("cert.pem", "CERTIFICATE", leaf.Certificate[0])
	keyFile := write("key.pem", "PRIVATE KEY", keyDER)
	caFile := write("ca.pem", "CERTIFICATE", ca.Raw)
	creds, err := CredentialsFromFiles(certFile, keyFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if n := creds.Names(); len(n) != 1 || n[0] != "n7" {
		t.Errorf("Names() = %v", n)
	}
	if _, err := CredentialsFromFiles(certFile, keyFile, keyFile); err == nil {
		t.Error("a CA file without certificates accepted")
	}
	if _, err := CredentialsFromFiles(certFile, caFile, caFile); err == nil {
		t.Error("a certificate as key accepted")
	}
}

// newTestCA makes a CA of the test's own (a random key): what an operator
// of the `tls` option brings.
func newTestCA(t *testing.T, name string) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca, key
}

// writeCredFiles writes leaf, its key and the CA bundle cas as PEM files in
// a fresh directory, as the `tls <cert> <key> <ca>` option reads them.
func writeCredFiles(t *testing.T, leaf tls.Certificate, cas ...*x509.Certificate) (certFile, keyFile, caFile string) {
	t.Helper()
	dir := t.TempDir()
	keyDER, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	var bundle []byte
	for _, ca := range cas {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})...)
	}
	for name, data := range map[string][]byte{
		"cert.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}),
		"key.pem":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		"ca.pem":   bundle,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "ca.pem")
}

// fileCreds issues a leaf for name from ca and loads it, with the bundle
// cas, through CredentialsFromFiles.
func fileCreds(t *testing.T, ca *x509.Certificate, key crypto.Signer, name string, cas ...*x509.Certificate) *Credentials {
	t.Helper()
	leaf, err := IssueLeaf(ca, key, name)
	if err != nil {
		t.Fatal(err)
	}
	c, err := CredentialsFromFiles(writeCredFiles(t, leaf, cas...))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serverCert dials addr with tc and returns the certificate the server
// presented.
func serverCert(t *testing.T, addr string, tc *tls.Config) (*x509.Certificate, error) {
	t.Helper()
	conn, err := dialRaw(t, addr, tc)
	if err != nil {
		return nil, err
	}
	defer conn.CloseWithError(0, "")
	return conn.ConnectionState().TLS.PeerCertificates[0], nil
}

// dialledCert makes n dial a bare QUIC listener that presents probe's leaf
// (named "probe") and checks clients against probe's CAs, and returns the
// client certificate n presented, or an error if no handshake completed
// within wait.
func dialledCert(t *testing.T, n *testNode, probe *Credentials, wait time.Duration) (*x509.Certificate, error) {
	t.Helper()
	pc := bindLoopback(t)
	tr := &quic.Transport{Conn: pc}
	defer pc.Close()
	defer tr.Close()
	ln, err := tr.Listen(probe.ServerConfig(), quicConfig(DefaultIdleTimeout))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var old []Peer
	for _, p := range n.Peers() {
		old = append(old, Peer{p.Name, p.Addr})
	}
	n.SetPeers(append(slices.Clone(old), Peer{"probe", pc.LocalAddr().String()}))
	defer n.SetPeers(old)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	conn, err := ln.Accept(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.CloseWithError(0, "")
	return conn.ConnectionState().TLS.PeerCertificates[0], nil
}

// fetchBothWays checks that n1 and n2 still fetch from each other.
func fetchBothWays(t *testing.T, nodes []*testNode) {
	t.Helper()
	ctx := context.Background()
	for _, tc := range []struct {
		from *testNode
		to   string
		body []byte
	}{{nodes[1], "n1", body(1000, 1)}, {nodes[0], "n2", body(1000, 2)}} {
		_, got, err := tc.from.Fetch(ctx, tc.to, Request{Group: "g", Path: "/x"})
		if err != nil || !bytes.Equal(got, tc.body) {
			t.Fatalf("%s → %s: %v (%d bytes)", tc.from.Name(), tc.to, err, len(got))
		}
	}
}

// noneDown checks that no node saw the other down: the connections made at
// the start are the ones still in use.
func noneDown(t *testing.T, nodes []*testNode) {
	t.Helper()
	if n := nodes[0].rec.count(kind(EventDown, "n2")) + nodes[1].rec.count(kind(EventDown, "n1")); n != 0 {
		t.Fatalf("%d down events: a connection was dropped", n)
	}
	if nodes[0].rec.count(kind(EventUp, "n2")) != 1 || nodes[1].rec.count(kind(EventUp, "n1")) != 1 {
		t.Fatal("a peer came up more than once: a connection was replaced")
	}
}

// TestLeafRenewal: n1's leaf from the secret is valid for 3s. After it has
// expired, the connections made before still carry fetches, and new
// handshakes (n1 accepting, n1 dialling) present a renewed leaf. The
// control run, the same leaf without renewal, shows what the renewal
// prevents: the expired leaf is refused both ways.
func TestLeafRenewal(t *testing.T) {
	for _, renew := range []bool{true, false} {
		t.Run(map[bool]string{true: "renewing", false: "control without renewal"}[renew], func(t *testing.T) {
			t.Parallel()
			creds, err := credentialsFromSecret(testSecret, "n1", 3*time.Second, time.Now)
			if err != nil {
				t.Fatal(err)
			}
			if !renew {
				creds.issuer = nil
			}
			first := creds.cert.Leaf
			nodes := startCluster(t, []string{"n1", "n2"}, func(i int, c *Config) {
				if i == 0 {
					c.TLS = creds
				}
			})
			nodes[0].backend.put("g", Meta{Path: "/x"}, body(1000, 1))
			nodes[1].backend.put("g", Meta{Path: "/x"}, body(1000, 2))
			waitUp(t, nodes)
			fetchBothWays(t, nodes)
			if left := time.Until(first.NotAfter); left < time.Second {
				t.Fatalf("cluster up with only %v of the leaf left", left)
			}

			time.Sleep(time.Until(first.NotAfter) + 300*time.Millisecond)
			if !time.Now().After(first.NotAfter) {
				t.Fatal("leaf not expired yet")
			}
			// (a) The connections made with the first leaf go on.
			fetchBothWays(t, nodes)
			noneDown(t, nodes)

			// (b) A new handshake with n1 as server.
			probe := credsFor(t, testSecret, "probe")
			got, err := serverCert(t, nodes[0].addr, probe.ClientConfig("n1"))
			if !renew {
				// (c) Without renewal the peer refuses the expired leaf.
				var inv x509.CertificateInvalidError
				if err == nil || !(errors.As(err, &inv) && inv.Reason == x509.Expired || strings.Contains(err.Error(), "expired")) {
					t.Fatalf("expired leaf: dial got %v, want an expired certificate error", err)
				}
				t.Logf("expired leaf refused: %v", err)
			} else {
				if err != nil {
					t.Fatalf("dial after expiry: %v", err)
				}
				if got.SerialNumber.Cmp(first.SerialNumber) == 0 || !got.NotAfter.After(first.NotAfter) || !got.NotAfter.After(time.Now()) {
					t.Fatalf("n1 presented serial %x valid until %v; first leaf serial %x until %v",
						got.SerialNumber, got.NotAfter, first.SerialNumber, first.NotAfter)
				}
				if cur := nodes[0].Credentials().cert.Leaf; !bytes.Equal(cur.Raw, got.Raw) {
					t.Fatal("presented leaf is not the node's current one")
				}
				t.Logf("first leaf until %v, renewed leaf until %v", first.NotAfter.Format(time.StampMilli), got.NotAfter.Format(time.StampMilli))
			}

			// n1 dialling: its client certificate.
			got, err = dialledCert(t, nodes[0], probe, 2*time.Second)
			if !renew {
				if err == nil {
					t.Fatal("a peer accepted n1's expired leaf as client certificate")
				}
			} else {
				if err != nil {
					t.Fatalf("n1 dialling after expiry: %v", err)
				}
				if !bytes.Equal(got.Raw, nodes[0].Credentials().cert.Leaf.Raw) || got.SerialNumber.Cmp(first.SerialNumber) == 0 {
					t.Fatal("n1 dialled with a leaf other than its renewed one")
				}
				if r := nodes[0].tlsCreds.renewals.Load(); r != 1 {
					t.Fatalf("%d renewals, want 1", r)
				}
			}

			// And the first connections still go on.
			fetchBothWays(t, nodes)
			noneDown(t, nodes)
		})
	}
}

// TestRenewalOnce: with an injected clock, a leaf is kept until two thirds
// of its validity have passed, then re-issued exactly once however many
// handshakes ask at once; while it is still valid a handshake that finds a
// renewal under way goes on with it, once it has expired every handshake
// gets the renewed one.
func TestRenewalOnce(t *testing.T) {
	var clock atomic.Pointer[time.Time]
	set := func(tm time.Time) { clock.Store(&tm) }
	start := time.Now()
	set(start)
	creds, err := credentialsFromSecret(testSecret, "n1", 90*time.Minute, func() time.Time { return *clock.Load() })
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{log: zap.NewNop()}
	n.cfg.Name = "n1"
	n.tlsCreds.cur.Store(creds)

	set(start.Add(59 * time.Minute))
	if n.credentials() != creds || n.tlsCreds.renewals.Load() != 0 {
		t.Fatal("renewed with more than a third of the validity left")
	}

	// hammer calls credentials from 64 goroutines at once and returns what
	// they got.
	hammer := func() []*Credentials {
		out := make([]*Credentials, 64)
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for i := range out {
			wg.Go(func() {
				<-gate
				out[i] = n.credentials()
			})
		}
		close(gate)
		wg.Wait()
		return out
	}

	set(start.Add(61 * time.Minute))
	got := hammer()
	renewed := n.Credentials()
	if renewed == creds || n.tlsCreds.renewals.Load() != 1 {
		t.Fatalf("%d renewals, want 1", n.tlsCreds.renewals.Load())
	}
	kept := 0
	for _, c := range got {
		switch c {
		case creds:
			kept++
		case renewed:
		default:
			t.Fatal("a handshake got credentials that are neither the old nor the renewed ones")
		}
	}
	t.Logf("due: %d of 64 handshakes went on with the old leaf during the renewal", kept)
	if want := start.Add(61*time.Minute + 90*time.Minute); renewed.cert.Leaf.NotAfter.Sub(want).Abs() > time.Second {
		t.Fatalf("renewed leaf valid until %v, want %v", renewed.cert.Leaf.NotAfter, want)
	}
	if renewed.renewDue() || renewed.issuer == nil {
		t.Fatal("renewed credentials due at once, or not renewable")
	}

	// Past the renewed leaf's NotAfter: every handshake waits for, and
	// gets, the next one.
	set(renewed.cert.Leaf.NotAfter.Add(time.Second))
	got = hammer()
	next := n.Credentials()
	if next == renewed || n.tlsCreds.renewals.Load() != 2 {
		t.Fatalf("%d renewals, want 2", n.tlsCreds.renewals.Load())
	}
	for _, c := range got {
		if c != next {
			t.Fatal("a handshake went on with an expired leaf")
		}
	}

	// Credentials without an issuer (from files) are never renewed.
	files := fileCreds(t, creds.issuer.ca, creds.issuer.key, "n1", creds.issuer.ca)
	if err := n.SetCredentials(files); err != nil {
		t.Fatal(err)
	}
	set(start.Add(1000 * 24 * time.Hour))
	if n.credentials() != files || n.tlsCreds.renewals.Load() != 2 {
		t.Fatal("file credentials renewed")
	}
}

// TestSetCredentials: n1 and n2 run with leaves from CA A and trust A and
// B. Reloading n1's unchanged files gives Equal credentials. Then n1 is
// given a leaf from B and trusts B only: the connections made before go
// on; a new handshake with n1 as server presents the B leaf and refuses a
// client from A; n1 dialling presents the B leaf.
func TestSetCredentials(t *testing.T) {
	caA, keyA := newTestCA(t, "CA A")
	caB, keyB := newTestCA(t, "CA B")
	leaf, err := IssueLeaf(caA, keyA, "n1")
	if err != nil {
		t.Fatal(err)
	}
	n1Files := make([]string, 3)
	n1Files[0], n1Files[1], n1Files[2] = writeCredFiles(t, leaf, caA, caB)
	n1Creds, err := CredentialsFromFiles(n1Files[0], n1Files[1], n1Files[2])
	if err != nil {
		t.Fatal(err)
	}
	nodes := startCluster(t, []string{"n1", "n2"}, func(i int, c *Config) {
		if i == 0 {
			c.TLS = n1Creds
		} else {
			c.TLS = fileCreds(t, caA, keyA, "n2", caA, caB)
		}
	})
	nodes[0].backend.put("g", Meta{Path: "/x"}, body(1000, 1))
	nodes[1].backend.put("g", Meta{Path: "/x"}, body(1000, 2))
	waitUp(t, nodes)
	fetchBothWays(t, nodes)
	probeA := fileCreds(t, caA, keyA, "probe", caA, caB)
	probeB := fileCreds(t, caB, keyB, "probe", caA, caB)
	if got, err := serverCert(t, nodes[0].addr, probeA.ClientConfig("n1")); err != nil || !bytes.Equal(got.Raw, leaf.Certificate[0]) {
		t.Fatalf("before: %v", err)
	}

	// A reload that finds the same file contents changes nothing.
	again, err := CredentialsFromFiles(n1Files[0], n1Files[1], n1Files[2])
	if err != nil {
		t.Fatal(err)
	}
	if !again.Equal(nodes[0].Credentials()) {
		t.Fatal("the same files loaded twice are not Equal")
	}

	newCreds := fileCreds(t, caB, keyB, "n1", caB)
	if newCreds.Equal(nodes[0].Credentials()) {
		t.Fatal("new files Equal to the old ones")
	}
	if err := nodes[0].SetCredentials(newCreds); err != nil {
		t.Fatal(err)
	}
	if nodes[0].Credentials() != newCreds {
		t.Fatal("Credentials() does not return what SetCredentials set")
	}
	// The connections made before go on.
	fetchBothWays(t, nodes)
	noneDown(t, nodes)

	// A new handshake with n1 as server: the new leaf ...
	got, err := serverCert(t, nodes[0].addr, probeB.ClientConfig("n1"))
	if err != nil {
		t.Fatalf("dial with a leaf from B: %v", err)
	}
	if !bytes.Equal(got.Raw, newCreds.cert.Leaf.Raw) {
		t.Fatalf("n1 presented %q serial %x, not its new leaf", got.Issuer.CommonName, got.SerialNumber)
	}
	// ... and the new CA pool: a client from A is refused (it sends its
	// leaf although n1 now asks for one from B only; before, it passed).
	tc := probeA.ClientConfig("n1")
	tc.Certificates = nil
	tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &probeA.cert, nil }
	conn, err := dialRaw(t, nodes[0].addr, tc)
	refused(t, conn, err)

	// n1 dialling presents the new leaf.
	got, err = dialledCert(t, nodes[0], probeB, 3*time.Second)
	if err != nil {
		t.Fatalf("n1 dialling: %v", err)
	}
	if !bytes.Equal(got.Raw, newCreds.cert.Leaf.Raw) {
		t.Fatalf("n1 dialled with %q serial %x, not its new leaf", got.Issuer.CommonName, got.SerialNumber)
	}

	fetchBothWays(t, nodes)
	noneDown(t, nodes)
}

// TestSetCredentialsOtherName: credentials whose leaf does not name the
// node are refused, with the names found, and the node keeps its own.
func TestSetCredentialsOtherName(t *testing.T) {
	nodes := startCluster(t, []string{"n1"}, nil)
	own := nodes[0].Credentials()
	err := nodes[0].SetCredentials(credsFor(t, testSecret, "n2"))
	if err == nil || !strings.Contains(err.Error(), `"n1"`) || !strings.Contains(err.Error(), "[n2]") {
		t.Fatalf("got %v, want an error naming n1 and the names found, [n2]", err)
	}
	t.Logf("refused: %v", err)
	if err := nodes[0].SetCredentials(nil); err == nil {
		t.Fatal("nil credentials accepted")
	}
	if nodes[0].Credentials() != own {
		t.Fatal("refused credentials were installed")
	}
	got, err := serverCert(t, nodes[0].addr, credsFor(t, testSecret, "probe").ClientConfig("n1"))
	if err != nil || !bytes.Equal(got.Raw, own.cert.Leaf.Raw) {
		t.Fatalf("after the refusal: %v", err)
	}
}

// TestFingerprint: Equal and Fingerprint follow the content of the files,
// not their paths or the order of the CA bundle.
func TestFingerprint(t *testing.T) {
	caA, keyA := newTestCA(t, "CA A")
	caB, _ := newTestCA(t, "CA B")
	leaf, err := IssueLeaf(caA, keyA, "n1")
	if err != nil {
		t.Fatal(err)
	}
	load := func(leaf tls.Certificate, cas ...*x509.Certificate) *Credentials {
		c, err := CredentialsFromFiles(writeCredFiles(t, leaf, cas...))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	base := load(leaf, caA, caB)
	same := load(leaf, caA, caB) // other paths, same content
	if !base.Equal(same) || base.Fingerprint() != same.Fingerprint() {
		t.Fatal("same content, not Equal")
	}
	if !base.Equal(load(leaf, caB, caA, caB)) {
		t.Fatal("same CAs in another order (one twice), not Equal")
	}
	other, _ := IssueLeaf(caA, keyA, "n1")
	for name, c := range map[string]*Credentials{
		"another leaf":      load(other, caA, caB),
		"fewer CAs":         load(leaf, caA),
		"another CA":        load(leaf, caB),
		"nil":               nil,
		"secret, same name": credsFor(t, testSecret, "n1"),
	} {
		if base.Equal(c) || c.Equal(base) {
			t.Errorf("%s: Equal", name)
		}
		if c != nil && c.Fingerprint() == base.Fingerprint() {
			t.Errorf("%s: same fingerprint", name)
		}
	}
	if !(*Credentials)(nil).Equal(nil) {
		t.Error("nil not Equal to nil")
	}
	if len(base.Fingerprint()) != 64 {
		t.Errorf("fingerprint %q", base.Fingerprint())
	}
}
