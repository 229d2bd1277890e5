package peering

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"
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
