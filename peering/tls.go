package peering

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// The cluster CA derived from a secret is fully determined by the secret:
// same key, serial, validity and subject on every node, so every node builds
// the byte-identical certificate (Ed25519 signatures are deterministic).
var (
	caSalt      = []byte("shardcache cluster CA v1")
	caInfo      = "shardcache cluster CA v1 ed25519 seed"
	caSerial    = big.NewInt(1)
	caNotBefore = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	caNotAfter  = time.Date(2124, 1, 1, 0, 0, 0, 0, time.UTC)
	caSubject   = pkix.Name{Organization: []string{"shardcache"}, CommonName: "shardcache cluster CA"}
)

// leafValidity is how long a leaf issued by IssueLeaf is valid. Leaves are
// issued afresh at every start, and a running Node re-issues its own when
// less than a third of this is left (see Node.credentials), so this only
// bounds a leaked key's use.
const leafValidity = 365 * 24 * time.Hour

// minSecretLen is the shortest secret CAFromSecret accepts.
const minSecretLen = 16

// CAFromSecret derives the cluster CA from the cluster secret:
// HKDF-SHA256(secret) → Ed25519 seed → a self-signed CA certificate with a
// fixed serial, validity and subject. Every node given the same secret
// derives the same DER bytes; a different secret gives an unrelated CA.
// The secret is never logged or kept.
func CAFromSecret(secret string) (*x509.Certificate, crypto.Signer, error) {
	if len(secret) < minSecretLen {
		return nil, nil, fmt.Errorf("cluster secret too short: need at least %d bytes", minSecretLen)
	}
	seed, err := hkdf.Key(sha256.New, []byte(secret), caSalt, caInfo, ed25519.SeedSize)
	if err != nil {
		return nil, nil, fmt.Errorf("deriving cluster CA key: %w", err)
	}
	key := ed25519.NewKeyFromSeed(seed)
	pub := key.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber:          caSerial,
		Subject:               caSubject,
		NotBefore:             caNotBefore,
		NotAfter:              caNotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		// Fixed so that nothing depends on how the library derives it.
		SubjectKeyId: skid(pub),
	}
	// Ed25519 signing reads no randomness; errReader proves it.
	der, err := x509.CreateCertificate(errReader{}, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating cluster CA: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing cluster CA: %w", err)
	}
	return ca, key, nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) {
	return 0, errors.New("deterministic CA must not read randomness")
}

func skid(pub ed25519.PublicKey) []byte {
	h := sha256.Sum256(pub)
	return h[:20]
}

// IssueLeaf issues a certificate for nodeName signed by the CA: a fresh
// random Ed25519 key, DNS SAN nodeName, usable as TLS server and client, and
// valid for a year. The name is what peers dial (TLS ServerName) and what the
// node's HELLO must carry, so it must be a valid DNS name ("n1", "cache-2").
func IssueLeaf(ca *x509.Certificate, caKey crypto.Signer, nodeName string) (tls.Certificate, error) {
	return issueLeaf(ca, caKey, nodeName, time.Now(), leafValidity)
}

// issueLeaf is IssueLeaf at time now for validity.
func issueLeaf(ca *x509.Certificate, caKey crypto.Signer, nodeName string, now time.Time, validity time.Duration) (tls.Certificate, error) {
	if nodeName == "" {
		return tls.Certificate{}, errors.New("issuing node certificate: empty node name")
	}
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating node key: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"shardcache"}, CommonName: nodeName},
		DNSNames:    []string{nodeName},
		NotBefore:   now.Add(-time.Hour), // tolerate clock skew between nodes
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	return signCert(tmpl, pub, key, ca, caKey, fmt.Sprintf("certificate for node %q", nodeName))
}

// signCert gives tmpl a random serial, signs it with the CA for the key
// pair pub/key and returns it as a TLS certificate; what names it in
// errors.
func signCert(tmpl *x509.Certificate, pub crypto.PublicKey, key crypto.Signer, ca *x509.Certificate, caKey crypto.Signer, what string) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating serial: %w", err)
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issuing %s: %w", what, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parsing %s: %w", what, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// Credentials are a node's TLS identity in the cluster: its leaf and the
// CAs that peers' leaves must chain to. Immutable once built: a Node swaps
// whole Credentials (Node.SetCredentials, or its own renewal of a leaf
// derived from a secret), so a handshake always sees a leaf and a CA pool
// that belong together.
type Credentials struct {
	cert  tls.Certificate
	roots *x509.CertPool
	cas   []*x509.Certificate

	// issuer, if set, can re-issue the leaf: the credentials come from a
	// secret. renewAt is when the leaf is due for renewal: when a third of
	// its validity is left.
	issuer  *leafIssuer
	renewAt time.Time
}

// leafIssuer re-issues a node's leaf from the cluster CA derived from the
// secret. It keeps the CA key in memory, as CredentialsFromSecret derives
// it anyway.
type leafIssuer struct {
	ca       *x509.Certificate
	key      crypto.Signer
	name     string
	validity time.Duration    // leafValidity; tests shorten it
	now      func() time.Time // time.Now; tests replace it
}

// issue returns credentials with a fresh leaf from i, trusting cas.
func (i *leafIssuer) issue(cas []*x509.Certificate) (*Credentials, error) {
	now := i.now()
	leaf, err := issueLeaf(i.ca, i.key, i.name, now, i.validity)
	if err != nil {
		return nil, err
	}
	c, err := NewCredentials(leaf, cas...)
	if err != nil {
		return nil, err
	}
	c.issuer = i
	// From the NotAfter the certificate carries: it holds whole seconds.
	left := c.cert.Leaf.NotAfter.Sub(now)
	c.renewAt = c.cert.Leaf.NotAfter.Add(-left / 3)
	return c, nil
}

// renewDue reports whether c's leaf can and should be re-issued.
func (c *Credentials) renewDue() bool {
	return c.issuer != nil && !c.issuer.now().Before(c.renewAt)
}

// expired reports whether c's leaf is past its NotAfter, by the issuer's
// clock (only asked of renewable credentials).
func (c *Credentials) expired() bool {
	return c.issuer.now().After(c.cert.Leaf.NotAfter)
}

// NewCredentials builds credentials from a leaf (with Leaf set or parsable)
// and the cluster CAs.
func NewCredentials(cert tls.Certificate, cas ...*x509.Certificate) (*Credentials, error) {
	if len(cert.Certificate) == 0 || cert.PrivateKey == nil {
		return nil, errors.New("node certificate or key missing")
	}
	if cert.Leaf == nil {
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("parsing node certificate: %w", err)
		}
		cert.Leaf = leaf
	}
	if len(cas) == 0 {
		return nil, errors.New("no cluster CA")
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	return &Credentials{cert: cert, roots: pool, cas: slices.Clone(cas)}, nil
}

// CredentialsFromSecret derives the cluster CA from secret and issues a leaf
// for nodeName: the `secret` option. The credentials keep the CA and its key
// (in memory only), so that a Node using them re-issues its own leaf when
// less than a third of its year of validity is left.
func CredentialsFromSecret(secret, nodeName string) (*Credentials, error) {
	return credentialsFromSecret(secret, nodeName, leafValidity, time.Now)
}

// credentialsFromSecret is CredentialsFromSecret with leaves valid for
// validity by the clock now.
func credentialsFromSecret(secret, nodeName string, validity time.Duration, now func() time.Time) (*Credentials, error) {
	ca, key, err := CAFromSecret(secret)
	if err != nil {
		return nil, err
	}
	i := &leafIssuer{ca: ca, key: key, name: nodeName, validity: validity, now: now}
	return i.issue([]*x509.Certificate{ca})
}

// CredentialsFromFiles loads a PEM certificate (chain) and key and a PEM
// bundle of CAs: the `tls <cert> <key> <ca>` option. The certificate must
// name the node in its DNS SANs and allow both server and client auth.
func CredentialsFromFiles(certFile, keyFile, caFile string) (*Credentials, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading node certificate: %w", err)
	}
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading cluster CA: %w", err)
	}
	var cas []*x509.Certificate
	for rest := pemBytes; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing cluster CA %s: %w", caFile, err)
		}
		cas = append(cas, c)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("no CERTIFICATE in cluster CA file %s", caFile)
	}
	return NewCredentials(cert, cas...)
}

// Names returns the DNS names the leaf certifies.
func (c *Credentials) Names() []string { return slices.Clone(c.cert.Leaf.DNSNames) }

// checkName is the check Listen and SetCredentials make: the leaf names the
// node.
func (c *Credentials) checkName(name string) error {
	if c == nil {
		return errors.New("peering: TLS credentials required")
	}
	if !slices.Contains(c.cert.Leaf.DNSNames, name) {
		return fmt.Errorf("peering: node certificate does not name node %q (DNS names %v)", name, c.cert.Leaf.DNSNames)
	}
	return nil
}

// Fingerprint is a SHA-256 over what the credentials present and trust:
// the leaf's chain (DER, in order), the private key's public key and the
// CAs (DER, in any order). Credentials loaded twice from unchanged files
// have the same fingerprint; a changed certificate, key or CA bundle gives
// another. Credentials from a secret carry a fresh leaf each time, so two
// of them never match: compare secrets instead.
func (c *Credentials) Fingerprint() string {
	h := sha256.New()
	field := func(tag byte, b []byte) {
		var n [9]byte
		n[0] = tag
		binary.BigEndian.PutUint64(n[1:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	for _, der := range c.cert.Certificate {
		field('C', der)
	}
	if s, ok := c.cert.PrivateKey.(crypto.Signer); ok {
		if pub, err := x509.MarshalPKIXPublicKey(s.Public()); err == nil {
			field('K', pub)
		} else {
			field('k', []byte(fmt.Sprintf("%T", s.Public())))
		}
	}
	cas := make([][]byte, len(c.cas))
	for i, ca := range c.cas {
		cas[i] = ca.Raw
	}
	slices.SortFunc(cas, bytes.Compare)
	cas = slices.CompactFunc(cas, bytes.Equal)
	for _, der := range cas {
		field('A', der)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Equal reports whether c and o present the same leaf chain and key and
// trust the same CAs (see Fingerprint). Two nil Credentials are equal.
func (c *Credentials) Equal(o *Credentials) bool {
	if c == nil || o == nil {
		return c == o
	}
	return c == o || c.Fingerprint() == o.Fingerprint()
}

// ServerConfig is the TLS configuration for accepting peers: TLS 1.3 only,
// ALPN shardcache/1, and a client certificate from the cluster CA required.
func (c *Credentials) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{ALPN},
		Certificates: []tls.Certificate{c.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    c.roots,
		// Connections are long-lived and few; resumption would only add a
		// path that skips certificate checks.
		SessionTicketsDisabled: true,
	}
}

// ClientConfig is the TLS configuration for dialling the peer named
// serverName: TLS 1.3 only, ALPN shardcache/1, our leaf as client
// certificate, and the peer's certificate verified against the cluster CA
// for that name.
func (c *Credentials) ClientConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{ALPN},
		Certificates: []tls.Certificate{c.cert},
		RootCAs:      c.roots,
		ServerName:   serverName,
	}
}

// clientConfigAnyName is the TLS configuration for dialling a peer known
// only by its address (Peer.Name ""), whose name is not known before its
// HELLO: like ClientConfig, but the peer's certificate may carry any DNS
// name. The chain is still verified, by VerifyConnection (see
// verifyAnyName): the leaf must chain to the cluster CAs, be valid now,
// allow server auth and name at least one DNS name. Only the check of the
// name against a ServerName is skipped (InsecureSkipVerify, which turns off
// the library's verification so that VerifyConnection does it all). The
// dialer then requires the name in the peer's HELLO to be one of the
// leaf's DNS names.
func (c *Credentials) clientConfigAnyName() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{ALPN},
		Certificates: []tls.Certificate{c.cert},
		// The name only: VerifyConnection checks the chain, the validity
		// and the EKU, and refuses the handshake if any fails.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return c.verifyAnyName(cs.PeerCertificates, x509.ExtKeyUsageServerAuth)
		},
	}
}

// errNoPeerCert is verifyAnyName's error for a peer that presented no
// certificate.
var errNoPeerCert = errors.New("peering: peer presented no certificate")

// verifyAnyName verifies certs (the peer's leaf, then any intermediates as
// sent) against c's CAs at the current time, for usage, without checking
// a name: the library's verification minus the ServerName match. The leaf
// must carry at least one DNS name (the names its HELLO may use).
func (c *Credentials) verifyAnyName(certs []*x509.Certificate, usage x509.ExtKeyUsage) error {
	if len(certs) == 0 {
		return errNoPeerCert
	}
	inter := x509.NewCertPool()
	for _, ic := range certs[1:] {
		inter.AddCert(ic)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         c.roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}); err != nil {
		return fmt.Errorf("peering: peer certificate: %w", err)
	}
	if len(certs[0].DNSNames) == 0 {
		return errors.New("peering: peer certificate names no node (no DNS name)")
	}
	return nil
}

// nodeCreds holds a running Node's current Credentials. Handshakes read
// them without a lock; mu serialises renewals and swaps.
type nodeCreds struct {
	cur      atomic.Pointer[Credentials]
	mu       sync.Mutex
	renewals atomic.Int64 // leaves re-issued, for tests and logs
}

// Credentials returns the node's current credentials: Config.TLS, those of
// the last SetCredentials, or the same with a leaf the node re-issued
// itself (credentials from a secret). Compare them with Equal to tell
// whether credentials loaded again from files changed.
func (n *Node) Credentials() *Credentials { return n.tlsCreds.cur.Load() }

// SetCredentials makes c the node's credentials for every handshake from
// now on, accepted or dialled: new connections present c's leaf and check
// peers against c's CAs. Established connections are kept as they are.
// The leaf must name the node, as Listen checks of Config.TLS; if it does
// not, the credentials in use stay and the error lists the names found.
// Credentials from a secret keep renewing their leaf.
func (n *Node) SetCredentials(c *Credentials) error {
	if err := c.checkName(n.cfg.Name); err != nil {
		return err
	}
	n.tlsCreds.mu.Lock()
	n.tlsCreds.cur.Store(c)
	n.tlsCreds.mu.Unlock()
	n.log.Info("node credentials replaced",
		zap.Strings("names", c.cert.Leaf.DNSNames),
		zap.Time("not_after", c.cert.Leaf.NotAfter),
		zap.String("fingerprint", c.Fingerprint()))
	return nil
}

// credentials returns the credentials for a handshake starting now. If
// they come from a secret and their leaf is due for renewal, it first
// re-issues the leaf (a key generation and a signature: well under a
// millisecond), once: a handshake that finds another one renewing goes on
// with the current leaf, which is still valid for a third of its life,
// unless it has expired, in which case it waits for the new one.
func (n *Node) credentials() *Credentials {
	nc := &n.tlsCreds
	c := nc.cur.Load()
	if !c.renewDue() {
		return c
	}
	if c.expired() {
		nc.mu.Lock()
	} else if !nc.mu.TryLock() {
		return c
	}
	defer nc.mu.Unlock()
	c = nc.cur.Load() // renewed or replaced meanwhile?
	if !c.renewDue() {
		return c
	}
	renewed, err := c.issuer.issue(c.cas)
	if err != nil {
		// Keep the old leaf; the next handshake tries again.
		n.log.Error("renewing node certificate", zap.Error(err),
			zap.Time("not_after", c.cert.Leaf.NotAfter))
		return c
	}
	nc.cur.Store(renewed)
	nc.renewals.Add(1)
	n.log.Info("node certificate renewed",
		zap.String("serial", renewed.cert.Leaf.SerialNumber.Text(16)),
		zap.Time("not_after", renewed.cert.Leaf.NotAfter),
		zap.Time("renew_at", renewed.renewAt))
	return renewed
}

// serverTLS is the listener's TLS configuration: each handshake gets
// ServerConfig of the credentials current at that moment (leaf and client
// CA pool together). The fields set here only make the outer configuration
// fail closed should it ever be used as is: no certificate, and an empty
// pool that verifies no client.
func (n *Node) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		NextProtos:             []string{ALPN},
		ClientAuth:             tls.RequireAndVerifyClientCert,
		ClientCAs:              x509.NewCertPool(),
		SessionTicketsDisabled: true,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return n.credentials().ServerConfig(), nil
		},
	}
}

// clientTLS is the TLS configuration of one dial to the peer named
// serverName, from the credentials current at that moment; serverName ""
// dials a peer known by address only (clientConfigAnyName).
func (n *Node) clientTLS(serverName string) *tls.Config {
	if serverName == "" {
		return n.credentials().clientConfigAnyName()
	}
	return n.credentials().ClientConfig(serverName)
}

// CAs returns the cluster CAs c trusts (the one derived from the secret,
// or those of the CA file).
func (c *Credentials) CAs() []*x509.Certificate { return slices.Clone(c.cas) }

// IssueServerCert issues a TLS server certificate for host (a DNS name or
// an IP address) signed by the cluster CA, with a fresh ECDSA P-256 key
// (which browsers and every TLS stack accept), valid from an hour before
// now (clock skew) for validity. It is the certificate of a node's HTTPS
// site that a content director verifies against the cluster CA: usable
// for server authentication only, so it is no peer identity (a peer's
// certificate must also allow client authentication, and its key stays
// with the node that asked for it anyway).
func IssueServerCert(ca *x509.Certificate, caKey crypto.Signer, host string, now time.Time, validity time.Duration) (tls.Certificate, error) {
	if host == "" {
		return tls.Certificate{}, errors.New("issuing site certificate: empty host")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating site key: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"shardcache"}, OrganizationalUnit: []string{"site"}, CommonName: host},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	return signCert(tmpl, &key.PublicKey, key, ca, caKey, fmt.Sprintf("site certificate for %q", host))
}
