package peering

import (
	"crypto"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"slices"
	"time"
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
// issued afresh at every start, so this only bounds a leaked key's use.
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
	if nodeName == "" {
		return tls.Certificate{}, errors.New("issuing node certificate: empty node name")
	}
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating node key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"shardcache"}, CommonName: nodeName},
		DNSNames:     []string{nodeName},
		NotBefore:    now.Add(-time.Hour), // tolerate clock skew between nodes
		NotAfter:     now.Add(leafValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issuing certificate for node %q: %w", nodeName, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parsing certificate for node %q: %w", nodeName, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// Credentials are a node's TLS identity in the cluster: its leaf and the
// CAs that peers' leaves must chain to. Immutable once built.
type Credentials struct {
	cert  tls.Certificate
	roots *x509.CertPool
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
	return &Credentials{cert: cert, roots: pool}, nil
}

// CredentialsFromSecret derives the cluster CA from secret and issues a leaf
// for nodeName: the `secret` option.
func CredentialsFromSecret(secret, nodeName string) (*Credentials, error) {
	ca, key, err := CAFromSecret(secret)
	if err != nil {
		return nil, err
	}
	leaf, err := IssueLeaf(ca, key, nodeName)
	if err != nil {
		return nil, err
	}
	return NewCredentials(leaf, ca)
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
