package integration

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shardcache/caddy-shardcache/peering"
)

// The director → node hop as users deploy it (README "Director"): a
// director whose site has a public name (shop.example) in front of nodes
// reached at their `lan` addresses over HTTPS, the nodes' certificates
// issued by the cluster CA derived from the secret (`tls { get_certificate
// shardcache }`) and trusted by the director (`tls_trust_pool shardcache`):
// no certificate file anywhere, and no Host rewriting, because the node
// site the director reaches has no host name (`https://:<port>`). The
// nodes and the director run examples/director/https-node.Caddyfile and
// https-director.Caddyfile, with the test's addresses.

// fromExample returns the text of the example file rel (under examples/)
// with each old string of pairs (old, new, old, new...) replaced, failing
// the test if the example no longer contains one: the test runs what the
// example says, so the example cannot drift from what is tested.
func fromExample(t *testing.T, rel string, pairs ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "examples", filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i+1 < len(pairs); i += 2 {
		if !strings.Contains(s, pairs[i]) {
			t.Fatalf("examples/%s no longer contains %q; update this test", rel, pairs[i])
		}
		s = strings.ReplaceAll(s, pairs[i], pairs[i+1])
	}
	return s
}

// exampleGlobals is what a test adds to an example's global block: its
// admin endpoint, sites on loopback only, no trust store, a short grace.
func exampleGlobals(admin string) string {
	return fmt.Sprintf("{\n\tadmin %s\n\tdefault_bind 127.0.0.1\n\tskip_install_trust\n\tgrace_period 5s\n\tshardcache {", admin)
}

// hopNodeCaddyfile is content node c as examples/director/https-node.Caddyfile
// writes n1: its lan site https://:<port> with a certificate from the
// cluster CA; the test's addresses, root and budgets, and X-Node on every
// response.
func hopNodeCaddyfile(t *testing.T, c clusterNodeConfig) string {
	t.Helper()
	var peers []string
	for _, m := range c.members {
		if m.name != c.self.name {
			peers = append(peers, fmt.Sprintf("peer %s %s", m.name, m.san))
		}
	}
	return fromExample(t, "director/https-node.Caddyfile",
		"{\n\tshardcache {", exampleGlobals(c.admin),
		"node n1 10.0.0.1:7946", fmt.Sprintf("node %s %s", c.self.name, c.self.san),
		"peer n2 10.0.0.2:7946\n\t\tpeer n3 10.0.0.3:7946", strings.Join(peers, "\n\t\t"),
		"lan 10.0.1.1:8443", fmt.Sprintf("lan 127.0.0.1:%d", c.port),
		"https://:8443 {\n", fmt.Sprintf("https://:%d {\n\tbind 127.0.0.1\n\theader X-Node %s\n", c.port, c.self.name),
		"root /srv/www", fmt.Sprintf("root %s\n\t\tgroup %s", c.root, clusterGroup),
		"memory 8GiB", "memory 64MiB",
		"hot 1GiB", "hot 8MiB",
	)
}

// hopExampleDirector is examples/director/https-director.Caddyfile with the
// test's addresses, its site http://<host>:<port> instead of example.com.
func hopExampleDirector(t *testing.T, admin, san string, members []clusterMember, nodePorts []int, host string, port int) string {
	t.Helper()
	pairs := []string{
		"{\n\tshardcache {", exampleGlobals(admin),
		"node director 10.0.0.9:7946", "node director " + san,
		"example.com {\n", fmt.Sprintf("http://%s:%d {\n\tbind 127.0.0.1\n", host, port),
	}
	for i, m := range members {
		pairs = append(pairs,
			fmt.Sprintf("peer %s 10.0.0.%d:7946", m.name, i+1), fmt.Sprintf("peer %s %s", m.name, m.san),
			fmt.Sprintf("https://10.0.1.%d:8443", i+1), fmt.Sprintf("https://127.0.0.1:%d", nodePorts[i]))
	}
	return fromExample(t, "director/https-director.Caddyfile", pairs...)
}

// hopDirectorCaddyfile is a director at san named name, with the secret
// from the environment, whose site http://<host>:<port> proxies to the
// nodes' lan sites over HTTPS trusting the cluster CA.
func hopDirectorCaddyfile(admin, name, san string, members []clusterMember, nodePorts []int, host string, port int) string {
	var ups []string
	for _, p := range nodePorts {
		ups = append(ups, fmt.Sprintf("https://127.0.0.1:%d", p))
	}
	return globalBlock(admin, shardcacheOption(clusterMember{name: name, san: san}, members, "{env."+clusterSecretEnv+"}", "observer")) +
		fmt.Sprintf(`
http://%s:%d {
	bind 127.0.0.1
	reverse_proxy %s {
		lb_policy shardcache
		transport http {
			tls_trust_pool shardcache
		}
	}
}
`, host, port, strings.Join(ups, " "))
}

// hostGet GETs p from the server at addr (127.0.0.1:port) with the Host
// header host.
func hostGet(addr, host, p string, headers ...string) (*response, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+p, nil)
	if err != nil {
		return nil, err
	}
	req.Host = host
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	return &response{proto: resp.Proto, status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// TestDirectorHop: (1) a director with another host name than the nodes
// reaches them over HTTPS, their certificates from the cluster CA, and
// every file comes back byte for byte from its owner, with listed and with
// dynamic upstreams; (2) the nodes' certificate chains to the CA derived
// from the secret and to nothing else, and a name the node does not answer
// for is refused; (3) a director with another secret gets no answer from
// the nodes (502): it cannot verify them.
func TestDirectorHop(t *testing.T) {
	needCaddy(t)
	site := genClusterSite(60, 61)
	// A file of three 4 MiB chunks, for a Range across two of them.
	big := make([]byte, 9<<20)
	for i := range big {
		big[i] = byte(i*7 + i>>12)
	}
	site["media/big.bin"] = big
	members := ftMembers(62, 3) // SAN 127.0.62.2-4:7946
	roots := writeClusterRoots(t, members, site)
	secret := newClusterSecret(t)
	g := newNodeGroup(t, secret)
	cfgs := clusterConfigs(t, members, roots)
	var nodes []*clusterNode
	var ports []int
	for _, c := range cfgs {
		nodes = append(nodes, g.launch(c.self.name, c.self.san, fmt.Sprintf("https://127.0.0.1:%d", c.port), c.root, hopNodeCaddyfile(t, c)))
		ports = append(ports, c.port)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range nodes {
		n.waitUp("", deadline) // the admin endpoint
		n.waitHTTP(n.base+"/", deadline)
	}
	if !waitClusterReady(t, nodes, site.paths(), len(site)) {
		return
	}
	owner := map[string]string{}
	for _, p := range site.paths() {
		owner[p] = nodes[0].mustWhere(t, p).Owner
	}

	// The director: shop.example in front.
	const host = "shop.example"
	port, dynPort := freePort(t), freePort(t)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dirSAN := "127.0.62.9:7946"
	// The example's director, plus a site with dynamic upstreams.
	dcf := hopExampleDirector(t, admin, dirSAN, members, ports, host, port) +
		fmt.Sprintf(`
http://dyn.%s:%d {
	bind 127.0.0.1
	reverse_proxy {
		dynamic shardcache
		lb_policy shardcache
		transport http {
			tls_trust_pool shardcache
		}
	}
}
`, host, dynPort)
	director := g.launch("director", dirSAN, fmt.Sprintf("http://127.0.0.1:%d", port), "", dcf)
	director.waitUp("", time.Now().Add(30*time.Second))
	waitFor(t, 20*time.Second, "the director to see every member up and ready", func() bool {
		for _, m := range members {
			if st, ok := memberView(director, m.name); !ok || !st.Up || !st.Ready {
				return false
			}
		}
		return true
	})

	t.Run("1_other_host_name_over_https", func(t *testing.T) {
		for _, s := range []struct {
			name, host string
			port       int
		}{{"listed", host, port}, {"dynamic", "dyn." + host, dynPort}} {
			addr := fmt.Sprintf("127.0.0.1:%d", s.port)
			served := map[string]int{}
			var bytesOK int64
			for _, p := range site.paths() {
				r, err := hostGet(addr, s.host, p)
				if err != nil {
					t.Fatalf("%s: GET %s (Host %s): %v", s.name, p, s.host, err)
				}
				want := site.file(p)
				if r.status != 200 || !bytes.Equal(r.body, want) {
					t.Errorf("%s: GET %s (Host %s): %d, %d bytes %s; want 200 and the file's %d bytes", s.name, p, s.host, r.status, len(r.body), clusterPreview(r.body), len(want))
					continue
				}
				if got := r.header.Get("X-Node"); got != owner[p] {
					t.Errorf("%s: GET %s: answered by %q; want its owner %s", s.name, p, got, owner[p])
				}
				served[r.header.Get("X-Node")]++
				bytesOK += int64(len(r.body))
			}
			// A Range across the first and second chunk of the large file.
			first, last := 4<<20-100, 4<<20+99
			r, err := hostGet(addr, s.host, "/media/big.bin", fmt.Sprintf("Range: bytes=%d-%d", first, last))
			if err != nil || r.status != 206 || !bytes.Equal(r.body, big[first:last+1]) {
				t.Errorf("%s: Range bytes=%d-%d of /media/big.bin: %v %+v", s.name, first, last, err, r)
			}
			t.Logf("%s upstreams: %d files (%d bytes) byte for byte through Host %s over HTTPS to the owners, answered by %v; a Range across two chunks",
				s.name, len(site), bytesOK, s.host, served)
		}
		// Each node issued its site certificate from the cluster CA, for the
		// address the director dialled (no SNI: an IP address).
		for _, n := range nodes {
			if es := n.findLogs(func(e logEntry) bool {
				return e.str("msg") == "issued a site certificate from the cluster CA" && e.str("name") == "127.0.0.1"
			}); len(es) == 0 {
				t.Errorf("%s: no log of a site certificate issued for 127.0.0.1", n.name)
			}
		}
	})

	t.Run("2_certificate", func(t *testing.T) {
		// The chain a node presents verifies against the CA derived from
		// the secret for 127.0.0.1, and not against the CA of another
		// secret.
		caFor := func(secret string) *x509.CertPool {
			ca := deriveCA(t, secret)
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			return pool
		}
		addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: caFor(secret), ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatalf("TLS to n1's site, trusting the cluster CA: %v", err)
		}
		cert := conn.ConnectionState().PeerCertificates[0]
		conn.Close()
		if len(cert.IPAddresses) != 1 || cert.IPAddresses[0].String() != "127.0.0.1" || len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
			t.Errorf("n1's site certificate: IPs %v, DNS %v, EKU %v; want 127.0.0.1, server authentication only", cert.IPAddresses, cert.DNSNames, cert.ExtKeyUsage)
		}
		if _, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: caFor(newClusterSecret(t)), ServerName: "127.0.0.1"}); err == nil {
			t.Errorf("TLS to n1's site verified against the CA of another secret")
		}
		// A server name that is not the node's lan host is refused at the
		// handshake (no certificate issued for names strangers choose).
		if c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: "bank.example"}); err == nil {
			c.Close()
			t.Errorf("TLS to n1's site with SNI bank.example: a certificate was served")
		}
	})

	t.Run("3_wrong_secret_refused", func(t *testing.T) {
		wrong := newNodeGroup(t, newClusterSecret(t))
		wport := freePort(t)
		wadmin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		wsan := "127.0.62.10:7946"
		wd := wrong.launch("intruder", wsan, fmt.Sprintf("http://127.0.0.1:%d", wport), "",
			hopDirectorCaddyfile(wadmin, "intruder", wsan, members, ports, host, wport))
		wd.waitUp("", time.Now().Add(30*time.Second))
		waddr := fmt.Sprintf("127.0.0.1:%d", wport)
		ok, _ := pollUntil(10*time.Second, func() bool {
			r, err := hostGet(waddr, host, "/")
			return err == nil && r.status != 0
		})
		if !ok {
			t.Fatalf("the director with another secret does not answer HTTP")
		}
		got := map[int]int{}
		for _, p := range site.paths()[:10] {
			r, err := hostGet(waddr, host, p)
			if err != nil {
				t.Fatalf("GET %s through the director with another secret: %v", p, err)
			}
			got[r.status]++
			if r.status == 200 || bytes.Contains(r.body, site.file(p)) && len(site.file(p)) > 0 {
				t.Errorf("GET %s through the director with another secret: %d, %d bytes: the nodes answered it", p, r.status, len(r.body))
			}
		}
		if got[http.StatusBadGateway] != 10 {
			t.Errorf("statuses through the director with another secret: %v; want 10 × 502", got)
		}
		// Refused at the hop's TLS handshake (the reverse proxy's error,
		// not peering's, which refuses it on the SAN too).
		es := wd.findLogs(func(e logEntry) bool {
			return e.str("logger") == "http.log.error" && strings.Contains(e.str("msg"), "certificate signed by unknown authority")
		})
		if len(es) == 0 {
			t.Errorf("the director with another secret did not log an unknown-authority error from the reverse proxy for the nodes' certificates")
		} else {
			t.Logf("director with another secret: %v; its reverse proxy logged: %s", got, es[0].str("msg"))
		}
	})
}

// deriveCA returns the cluster CA derived from secret, as every node
// derives it.
func deriveCA(t *testing.T, secret string) *x509.Certificate {
	t.Helper()
	ca, _, err := peering.CAFromSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}
