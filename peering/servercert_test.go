package peering

import (
	"crypto/x509"
	"testing"
	"time"
)

// TestIssueServerCert: a site certificate for an IP address or a DNS name,
// chaining to the cluster CA, for server authentication only, so that it
// is no peer identity.
func TestIssueServerCert(t *testing.T) {
	ca, key, err := CAFromSecret("0123456789abcdef0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	creds, err := CredentialsFromSecret("0123456789abcdef0123456789abcdef", "n1")
	if err != nil {
		t.Fatal(err)
	}
	if cas := creds.CAs(); len(cas) != 1 || !cas[0].Equal(ca) {
		t.Fatalf("Credentials.CAs: %d CAs; want the secret's", len(cas))
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, host := range []string{"10.0.1.1", "node1.lan", "::1"} {
		c, err := IssueServerCert(ca, key, host, now, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
		if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
			t.Errorf("%s: valid for client authentication", host)
		}
		if err := creds.verifyAnyName([]*x509.Certificate{c.Leaf}, x509.ExtKeyUsageClientAuth); err == nil {
			t.Errorf("%s: accepted as a peer's client certificate", host)
		}
	}
	if _, err := IssueServerCert(ca, key, "", now, time.Hour); err == nil {
		t.Error("empty host: no error")
	}
}
