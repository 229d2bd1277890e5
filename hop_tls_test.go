package shardcache

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/shardcache/caddy-shardcache/peering"
)

const hopTestSecret = "0123456789abcdef0123456789abcdef"

// fakeConn is a net.Conn that only has addresses (what a ClientHelloInfo
// needs).
type fakeConn struct {
	net.Conn
	local net.Addr
}

func (c fakeConn) LocalAddr() net.Addr { return c.local }

func newHopCertificate(t *testing.T, h *HopCertificate) *HopCertificate {
	t.Helper()
	ctx := caddy.Context{Context: context.Background()} // no config: no shardcache app
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	h.logger = zap.NewNop()
	return h
}

func hopPool(t *testing.T, secret string) *x509.CertPool {
	t.Helper()
	p := &HopCAPool{Secret: secret}
	if err := p.Provision(caddy.Context{Context: context.Background()}); err != nil {
		t.Fatal(err)
	}
	return p.CertPool()
}

func TestHopCertificate(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	h := newHopCertificate(t, &HopCertificate{Secret: hopTestSecret, Names: []string{"Node1.LAN."}, now: func() time.Time { return now }})
	pool := hopPool(t, hopTestSecret)
	verify := func(c *tls.Certificate, name string) error {
		_, err := c.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err
	}

	// No SNI: the local IP address the client reached.
	noSNI := &tls.ClientHelloInfo{Conn: fakeConn{local: &net.TCPAddr{IP: net.IPv4(10, 0, 1, 1), Port: 8443}}}
	c, err := h.GetCertificate(context.Background(), noSNI)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(c, "10.0.1.1"); err != nil {
		t.Errorf("certificate for 10.0.1.1 does not verify against the cluster CA: %v", err)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: hopPool(t, hopTestSecret+"x"), DNSName: "10.0.1.1", CurrentTime: now}); err == nil {
		t.Error("certificate verifies against the CA of another secret")
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("site certificate is valid for client authentication: it could pass as a peer identity")
	}
	// Cached, and re-issued once a third of its validity is left.
	if c2, _ := h.GetCertificate(context.Background(), noSNI); c2 != c {
		t.Error("second handshake: a new certificate; want the cached one")
	}
	now = now.Add(hopCertValidity * 2 / 3)
	if c3, _ := h.GetCertificate(context.Background(), noSNI); c3 == c || c3.Leaf.NotAfter.Before(now.Add(hopCertValidity/2)) {
		t.Errorf("after two thirds of its validity: not re-issued (NotAfter %s, now %s)", c3.Leaf.NotAfter, now)
	}

	// SNI: a listed name (normalised), and a name it refuses.
	c, err = h.GetCertificate(context.Background(), &tls.ClientHelloInfo{ServerName: "node1.lan"})
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(c, "node1.lan"); err != nil {
		t.Errorf("certificate for node1.lan: %v", err)
	}
	if c, err := h.GetCertificate(context.Background(), &tls.ClientHelloInfo{ServerName: "bank.example"}); err == nil || c != nil {
		t.Errorf("SNI bank.example: %v, %v; want an error and no certificate", c, err)
	}
	// IPv6 local address.
	c, err = h.GetCertificate(context.Background(), &tls.ClientHelloInfo{Conn: fakeConn{local: &net.UDPAddr{IP: net.ParseIP("fd00::1"), Port: 8443}}})
	if err != nil || verify(c, "fd00::1") != nil {
		t.Errorf("IPv6 local address: %v", err)
	}
	// No name and no address: an error, never an empty answer.
	if c, err := h.GetCertificate(context.Background(), &tls.ClientHelloInfo{}); err == nil || c != nil {
		t.Errorf("no SNI and no connection: %v, %v; want an error", c, err)
	}
}

// TestHopHandshake: a TLS server with the manager's certificates and a
// client trusting only the pool: the handshake works by IP and fails for
// a client of another cluster.
func TestHopHandshake(t *testing.T) {
	h := newHopCertificate(t, &HopCertificate{Secret: hopTestSecret})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		return h.GetCertificate(hello.Context(), hello)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	for _, tc := range []struct {
		secret string
		ok     bool
	}{{hopTestSecret, true}, {"another secret of 32 bytes......", false}} {
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: hopPool(t, tc.secret)})
		if conn != nil {
			conn.Close()
		}
		if (err == nil) != tc.ok {
			t.Errorf("client trusting the CA of secret %.8s...: err %v; want ok=%v", tc.secret, err, tc.ok)
		}
	}
}

func TestHopProvisionErrors(t *testing.T) {
	ctx := caddy.Context{Context: context.Background()}
	for _, m := range []caddy.Provisioner{&HopCAPool{}, &HopCertificate{}} {
		if err := m.Provision(ctx); err == nil || !strings.Contains(err.Error(), "no cluster secret") {
			t.Errorf("%T without a secret or a shardcache app: %v; want an error saying so", m, err)
		}
	}
	for _, m := range []caddy.Provisioner{&HopCAPool{Secret: "short"}, &HopCertificate{Secret: "{env.SHARDCACHE_HOP_UNSET}"}} {
		err := m.Provision(ctx)
		if err == nil || !strings.Contains(err.Error(), "need at least") {
			t.Errorf("%T with a short secret: %v", m, err)
		}
		if err != nil && strings.Contains(err.Error(), "short") {
			t.Errorf("%T: the error shows the secret: %v", m, err)
		}
	}
	// Both ends of one secret agree on the CA.
	ca, _, err := peering.CAFromSecret(hopTestSecret)
	if err != nil {
		t.Fatal(err)
	}
	p := &HopCAPool{Secret: hopTestSecret}
	if err := p.Provision(ctx); err != nil || len(p.Certificates()) != 1 || !p.Certificates()[0].Equal(ca) {
		t.Errorf("HopCAPool: %v, %d CAs; want the secret's CA", err, len(p.Certificates()))
	}
}

func TestHopCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		in      string
		pool    bool // HopCAPool, else HopCertificate
		secret  string
		names   []string
		wantErr string
	}{
		{in: `shardcache`, pool: true},
		{in: "shardcache {\n secret {env.S}\n}", pool: true, secret: "{env.S}"},
		{in: "shardcache {\n names a\n}", pool: true, wantErr: "unknown option 'names'"},
		{in: `shardcache abc`, pool: true, wantErr: "unexpected argument"},
		{in: `shardcache`},
		{in: "shardcache {\n secret x\n names a.lan 10.0.0.1\n names b\n}", secret: "x", names: []string{"a.lan", "10.0.0.1", "b"}},
		{in: "shardcache {\n names\n}", wantErr: "wrong argument count"},
		{in: "shardcache {\n secret a b\n}", wantErr: "wrong argument count"},
		{in: "shardcache {\n bogus\n}", wantErr: "unknown option 'bogus'"},
	} {
		d := caddyfile.NewTestDispenser(tc.in)
		var err error
		var secret string
		var names []string
		if tc.pool {
			var p HopCAPool
			err = p.UnmarshalCaddyfile(d)
			secret = p.Secret
		} else {
			var h HopCertificate
			err = h.UnmarshalCaddyfile(d)
			secret, names = h.Secret, h.Names
		}
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v; want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || secret != tc.secret || strings.Join(names, " ") != strings.Join(tc.names, " ") {
			t.Errorf("%q: err %v, secret %q, names %q; want %q %q", tc.in, err, secret, names, tc.secret, tc.names)
		}
	}
}
