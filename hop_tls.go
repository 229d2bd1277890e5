package shardcache

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/shardcache/caddy-shardcache/peering"
)

// The director → node hop over HTTPS, with no certificate files: both ends
// derive the cluster CA from the cluster secret, as peering does. The
// node's site gets its certificate from `tls { get_certificate shardcache }`
// (HopCertificate, issued by the cluster CA in memory), and the director's
// reverse_proxy trusts it with `transport http { tls_trust_pool shardcache }`
// (HopCAPool).

func init() {
	caddy.RegisterModule(HopCAPool{})
	caddy.RegisterModule(HopCertificate{})
}

// HopCAPool is a pool of trusted CAs holding the cluster CA: the one every
// node derives from the cluster secret (or, with `tls <cert> <key> <ca>`,
// the CAs of that file). A content director uses it to verify the
// certificates of the nodes' HTTPS sites (see HopCertificate):
//
//	reverse_proxy https://10.0.1.1:8443 https://10.0.1.2:8443 {
//		lb_policy shardcache
//		transport http {
//			tls_trust_pool shardcache
//		}
//	}
//
// By default it takes the secret from the `shardcache` global option of
// the same config (a director is an observer of the cluster, so it has
// one).
type HopCAPool struct {
	// The cluster secret, when it is not the `shardcache` global option's.
	// Placeholders such as `{env.SHARDCACHE_SECRET}` are replaced.
	Secret string `json:"secret,omitempty"`

	cas  []*x509.Certificate
	pool *x509.CertPool
}

// CaddyModule returns the Caddy module information.
func (HopCAPool) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.ca_pool.source.shardcache",
		New: func() caddy.Module { return new(HopCAPool) },
	}
}

// Provision derives the cluster CA.
func (p *HopCAPool) Provision(ctx caddy.Context) error {
	cas, err := hopCAs(ctx, p.Secret)
	if err != nil {
		return fmt.Errorf("tls_trust_pool shardcache: %v", err)
	}
	p.cas = cas
	p.pool = x509.NewCertPool()
	for _, ca := range cas {
		p.pool.AddCert(ca)
	}
	return nil
}

// CertPool returns the pool of the cluster CA.
func (p HopCAPool) CertPool() *x509.CertPool { return p.pool }

// Certificates returns the cluster CAs (for pools that combine sources).
func (p HopCAPool) Certificates() []*x509.Certificate { return p.cas }

// UnmarshalCaddyfile sets up the pool from Caddyfile tokens. Syntax:
//
//	... shardcache {
//		secret <secret>
//	}
//
// The block is optional: without it, the secret is the `shardcache` global
// option's.
func (p *HopCAPool) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		return d.Errf("shardcache: unexpected argument '%s' (the secret goes in a block: secret <value>)", d.Val())
	}
	return unmarshalHopBlock(d, &p.Secret, nil)
}

// HopCertificate gives a node's HTTPS site a certificate issued by the
// cluster CA (derived from the cluster secret, in memory: no file, no ACME)
// for the address a content director reaches it at, so that the director
// can verify it with `tls_trust_pool shardcache` (HopCAPool):
//
//	https://:8443 {
//		tls {
//			get_certificate shardcache
//		}
//		shardcache { ... }
//	}
//
// A site with no host name answers whatever Host the director forwards
// (the public name, example.com), so nothing has to rewrite it. A client
// that dials an IP address sends no server name (SNI) and gets a
// certificate for the local IP address it reached; one that sends a name
// gets a certificate for it only if it is the host of the node's `lan`
// address or one of Names; any other name is refused, so strangers cannot
// make the node issue certificates for names of their choosing.
// Certificates are ECDSA P-256, valid 30 days and re-issued when a third
// of that is left; the keys never leave memory.
type HopCertificate struct {
	// The cluster secret, when it is not the `shardcache` global option's.
	// Placeholders are replaced.
	Secret string `json:"secret,omitempty"`

	// Host names (or IP addresses) a client may ask for by SNI, besides
	// the host of the `lan` address.
	Names []string `json:"names,omitempty"`

	ca      *x509.Certificate
	caKey   crypto.Signer
	allowed map[string]bool
	now     func() time.Time // time.Now; tests replace it
	logger  *zap.Logger

	mu    *sync.Mutex
	certs map[string]*tls.Certificate // by name, under mu
}

// hopCertValidity is how long a site certificate of HopCertificate is
// valid; it is re-issued when a third of it is left.
const hopCertValidity = 30 * 24 * time.Hour

// hopCertMax bounds the certificates a HopCertificate keeps (one per
// local IP address and allowed name).
const hopCertMax = 64

// CaddyModule returns the Caddy module information.
func (HopCertificate) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.get_certificate.shardcache",
		New: func() caddy.Module { return new(HopCertificate) },
	}
}

// Provision derives the cluster CA and its key.
func (h *HopCertificate) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.mu = new(sync.Mutex)
	h.certs = map[string]*tls.Certificate{}
	if h.now == nil {
		h.now = time.Now
	}
	secret, lan, err := hopSecret(ctx, h.Secret, true)
	if err != nil {
		return fmt.Errorf("get_certificate shardcache: %v", err)
	}
	if h.ca, h.caKey, err = peering.CAFromSecret(secret); err != nil {
		return fmt.Errorf("get_certificate shardcache: %v", err)
	}
	h.allowed = map[string]bool{}
	repl := caddy.NewReplacer()
	for _, n := range h.Names {
		if n = normalizeHost(repl.ReplaceKnown(n, "")); n != "" {
			h.allowed[n] = true
		}
	}
	if lan != "" {
		if host, _, err := net.SplitHostPort(lan); err == nil && host != "" {
			h.allowed[normalizeHost(host)] = true
		}
	}
	return nil
}

// normalizeHost lower-cases a host name and drops a trailing dot and IPv6
// brackets.
func normalizeHost(s string) string {
	s = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
	return strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
}

// GetCertificate returns the certificate for the handshake: for the SNI
// name if it is allowed, for the local IP address without one. It never
// returns no certificate without an error, so Caddy never falls back to
// issuing one itself (on demand) for a name this refuses.
func (h *HopCertificate) GetCertificate(_ context.Context, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := normalizeHost(hello.ServerName)
	if name == "" {
		if hello.Conn == nil || hello.Conn.LocalAddr() == nil {
			return nil, errors.New("shardcache: a handshake without a server name and without a local address")
		}
		host, _, err := net.SplitHostPort(hello.Conn.LocalAddr().String())
		if err != nil {
			return nil, fmt.Errorf("shardcache: local address %s: %v", hello.Conn.LocalAddr(), err)
		}
		name = normalizeHost(host)
	} else if !h.allowed[name] {
		return nil, fmt.Errorf("shardcache: no certificate for server name %q: not the host of this node's lan address (add it to get_certificate shardcache { names ... })", name)
	}
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if c := h.certs[name]; c != nil {
		left := c.Leaf.NotAfter.Sub(now)
		if left > hopCertValidity/3 {
			return c, nil
		}
	}
	if len(h.certs) >= hopCertMax {
		// Only local addresses and allowed names get here: a machine with
		// that many is unusual; start over rather than grow.
		clear(h.certs)
	}
	c, err := peering.IssueServerCert(h.ca, h.caKey, name, now, hopCertValidity)
	if err != nil {
		return nil, fmt.Errorf("shardcache: %v", err)
	}
	h.certs[name] = &c
	h.logger.Info("issued a site certificate from the cluster CA", zap.String("name", name), zap.Time("not_after", c.Leaf.NotAfter))
	return &c, nil
}

// UnmarshalCaddyfile sets up the manager from Caddyfile tokens. Syntax:
//
//	get_certificate shardcache {
//		secret <secret>
//		names  <host...>
//	}
//
// The block is optional.
func (h *HopCertificate) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		return d.Errf("shardcache: unexpected argument '%s'", d.Val())
	}
	return unmarshalHopBlock(d, &h.Secret, &h.Names)
}

// unmarshalHopBlock reads the optional block of the hop modules: secret,
// and names when names is not nil.
func unmarshalHopBlock(d *caddyfile.Dispenser, secret *string, names *[]string) error {
	for d.NextBlock(0) {
		switch d.Val() {
		case "secret":
			if !d.NextArg() {
				return d.ArgErr()
			}
			*secret = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "names":
			if names == nil {
				return d.Errf("shardcache: unknown option '%s' (want secret)", d.Val())
			}
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			*names = append(*names, args...)
		default:
			if names == nil {
				return d.Errf("shardcache: unknown option '%s' (want secret)", d.Val())
			}
			return d.Errf("shardcache: unknown option '%s' (want secret or names)", d.Val())
		}
	}
	return nil
}

// hopCAs returns the cluster CAs: from secret if set, else from the
// `shardcache` global option of the config (its secret, or its tls CA
// file).
func hopCAs(ctx caddy.Context, secret string) ([]*x509.Certificate, error) {
	if secret == "" {
		a, err := hopApp(ctx)
		if err != nil {
			return nil, err
		}
		if a.creds != nil {
			return a.creds.CAs(), nil
		}
	}
	s, _, err := hopSecret(ctx, secret, false)
	if err != nil {
		return nil, err
	}
	ca, _, err := peering.CAFromSecret(s)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{ca}, nil
}

// hopSecret returns the cluster secret (placeholders replaced): secret if
// set, else the `shardcache` global option's; and the option's lan
// address. needKey: the caller must sign (a CA from tls files has no key
// here).
func hopSecret(ctx caddy.Context, secret string, needKey bool) (string, string, error) {
	var lan string
	if a, err := hopApp(ctx); err == nil {
		lan = a.Lan
		if secret == "" {
			switch {
			case a.cluster != nil && a.cluster.secret != "":
				return a.cluster.secret, lan, nil
			case needKey && a.creds != nil:
				return "", "", errors.New("the cluster uses `tls <cert> <key> <ca>`, whose CA key is not here: give the site a certificate of that CA with `tls <cert> <key>`, or use `secret`")
			}
		}
	} else if secret == "" {
		return "", "", err
	}
	s := caddy.NewReplacer().ReplaceKnown(secret, "")
	if len(s) < minSecretLen {
		return "", "", fmt.Errorf("secret %s: %d bytes once placeholders are replaced; need at least %d", redactSecret(secret), len(s), minSecretLen)
	}
	return s, lan, nil
}

// hopApp returns the config's shardcache app, provisioned, if it has a
// node.
func hopApp(ctx caddy.Context) (*App, error) {
	v, err := ctx.AppIfConfigured("shardcache")
	if err != nil {
		if errors.Is(err, caddy.ErrNotConfigured) {
			return nil, errors.New("no cluster secret: set `secret` here, or a `shardcache` global option with `node` and `secret`")
		}
		return nil, err
	}
	a, ok := v.(*App)
	if !ok || a.Node == nil {
		return nil, errors.New("no cluster secret: the `shardcache` global option has no node; set `secret` here, or `node` and `secret` there")
	}
	return a, nil
}

// Interface guards
var (
	_ caddy.Provisioner            = (*HopCAPool)(nil)
	_ caddytls.CA                  = HopCAPool{}
	_ caddytls.CertificateProvider = HopCAPool{}
	_ caddyfile.Unmarshaler        = (*HopCAPool)(nil)
	_ caddy.Provisioner            = (*HopCertificate)(nil)
	_ certmagic.Manager            = (*HopCertificate)(nil)
	_ caddyfile.Unmarshaler        = (*HopCertificate)(nil)
)
