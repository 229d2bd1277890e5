package integration

// Helpers of the director tests (director_test.go): three content nodes as
// in the cluster tests (SAN 127.0.0.2-4:7946), each advertising its HTTP
// site with `lan`, and a fourth Caddy, the content director, that joins the
// cluster as an observer on 127.0.0.9:7946 and proxies to the three sites.

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// directorSAN is the director's SAN address.
const directorSAN = "127.0.0.9:7946"

// directorNodeCaddyfile is clusterCaddyfile with `lan 127.0.0.1:<port>` in
// the global shardcache block and `header X-Node <name>` on the site, so
// that a response through the director says which node served it. tag is
// a value of the extra header X-Config (to make a reload change something).
func directorNodeCaddyfile(c clusterNodeConfig, tag string) string {
	return globalBlock(c.admin, shardcacheOption(c.self, c.members, "{env."+clusterSecretEnv+"}",
		fmt.Sprintf("lan 127.0.0.1:%d", c.port), "fetch_timeout 2s")) +
		clusterSiteBlock(c.port, c.root, "64MiB", "8MiB", "X-Node "+c.self.name, "X-Config "+tag)
}

// directorCaddyfile is the director's Caddyfile: an observer of members,
// with one site per load-balancing policy (port → policy), each proxying to
// the members' sites (ports, in members' order).
func directorCaddyfile(admin string, members []clusterMember, nodePorts []int, sites map[int]string) string {
	var b strings.Builder
	b.WriteString(globalBlock(admin, observerOption(directorSAN, members)))
	for port, policy := range sites {
		fmt.Fprintf(&b, `
http://127.0.0.1:%d {
	bind 127.0.0.1
	reverse_proxy %s {
		lb_policy %s
	}
}
`, port, upstreams(nodePorts), policy)
	}
	return b.String()
}

// directorCluster is three content nodes and a director. Content nodes may
// be launched later than the others (launch).
type directorCluster struct {
	*nodeGroup
	members  []clusterMember
	cfgs     []clusterNodeConfig
	nodes    []*clusterNode // by member index; nil until launched
	director *clusterNode
	sites    map[string]string // policy → http://127.0.0.1:port on the director
}

// newDirectorCluster prepares the configs (free ports, one root per
// member) and registers one cleanup that stops every launched process at
// once.
func newDirectorCluster(t *testing.T, roots []string) *directorCluster {
	t.Helper()
	d := &directorCluster{nodeGroup: newNodeGroup(t, newClusterSecret(t)), members: clusterMembers(3)}
	d.cfgs = clusterConfigs(t, d.members, roots)
	d.nodes = make([]*clusterNode, len(d.members))
	return d
}

// launch starts content node i without waiting for it.
func (d *directorCluster) launch(i int) *clusterNode {
	d.t.Helper()
	c := d.cfgs[i]
	cn := d.nodeGroup.launch(c.self.name, c.self.san, fmt.Sprintf("http://127.0.0.1:%d", c.port), c.root, directorNodeCaddyfile(c, "v1"))
	d.nodes[i] = cn
	return cn
}

// launchDirector starts the director with one site per policy.
func (d *directorCluster) launchDirector(policies ...string) *clusterNode {
	d.t.Helper()
	sites := map[int]string{}
	d.sites = map[string]string{}
	var ports []int
	for _, c := range d.cfgs {
		ports = append(ports, c.port)
	}
	for _, p := range policies {
		port := freePort(d.t)
		sites[port] = p
		d.sites[p] = fmt.Sprintf("http://127.0.0.1:%d", port)
	}
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(d.t))
	cf := directorCaddyfile(admin, d.members, ports, sites)
	d.director = d.nodeGroup.launch("director", directorSAN, d.sites[policies[0]], "", cf)
	return d.director
}

// memberView returns how n sees the member named name (ok false if it
// does not list it or its status cannot be read).
func memberView(n *clusterNode, name string) (clusterMemberState, bool) {
	st, ok := tryStatus(n)
	if !ok {
		return clusterMemberState{}, false
	}
	return st.member(name)
}

// nodeReady reports whether n's own status says ready (false on an error).
func nodeReady(n *clusterNode) bool {
	st, ok := tryStatus(n)
	return ok && st.Ready && st.group().Ready
}

// tierCounters is a node's tier counters (requests, bytes) and its fetches served for
// peers, as GET /shardcache/status reports them.
type tierCounters struct {
	req    map[string]int64 // tier → requests
	bytes  map[string]int64 // tier → bytes
	served int64
}

var tierNames = []string{"local", "hot", "peer", "storage"}

func nodeCounters(t *testing.T, n *clusterNode) tierCounters {
	t.Helper()
	g := n.status(t).group()
	c := tierCounters{req: map[string]int64{}, bytes: map[string]int64{}, served: g.ServedPeers}
	for _, tier := range tierNames {
		c.req[tier] = g.tier(tier).Requests
		c.bytes[tier] = g.tier(tier).Bytes
	}
	return c
}

// snapshotCounters returns the counters of every node of ns, by name.
func snapshotCounters(t *testing.T, ns []*clusterNode) map[string]tierCounters {
	t.Helper()
	out := map[string]tierCounters{}
	for _, n := range ns {
		out[n.name] = nodeCounters(t, n)
	}
	return out
}

// tierDelta sums, over the nodes, after-before per tier.
func tierDelta(before, after map[string]tierCounters) (req, bytes map[string]int64) {
	req, bytes = map[string]int64{}, map[string]int64{}
	for name, a := range after {
		b := before[name]
		for _, tier := range tierNames {
			req[tier] += a.req[tier] - b.req[tier]
			bytes[tier] += a.bytes[tier] - b.bytes[tier]
		}
	}
	return req, bytes
}

// sumTiers sums the values of m.
func sumTiers(m map[string]int64) int64 {
	var s int64
	for _, v := range m {
		s += v
	}
	return s
}

// rewriteUnseen replaces the bytes of the file at p with data (the same
// length) through a shared memory mapping, then sets its modification time
// back: inotify reports no write through a mapping, and the size and the
// modification time stay as they were, so neither the watcher nor a rescan
// can tell the file changed (as when storage is replaced under a
// filesystem that does not notify). Only the change of attributes is
// reported, and a look at the file finds nothing new.
func rewriteUnseen(t *testing.T, p string, data []byte) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != int64(len(data)) || len(data) == 0 {
		t.Fatalf("rewriteUnseen %s: %d new bytes for a file of %d", p, len(data), fi.Size())
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := syscall.Mmap(int(f.Fd()), 0, len(data), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap %s: %v", p, err)
	}
	copy(m, data)
	if err := syscall.Munmap(m); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if after.Size() != fi.Size() || !after.ModTime().Equal(fi.ModTime()) {
		t.Fatalf("rewriteUnseen %s: size %d mtime %s after, want %d %s", p, after.Size(), after.ModTime(), fi.Size(), fi.ModTime())
	}
	got, err := os.ReadFile(p)
	if err != nil || string(got) != string(data) {
		t.Fatalf("rewriteUnseen %s: the file does not hold the new bytes (%v)", p, err)
	}
}

// adminPost POSTs body (JSON) to an admin path of n and returns the status
// and the answer.
func adminPost(n *clusterNode, p, body string) (int, []byte, error) {
	resp, err := adminClient.Post("http://"+n.admin+p, "application/json", strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// metricSample is one line of the Prometheus text exposition.
type metricSample struct {
	name   string
	labels string // the text between the braces, "" for none
	value  float64
}

// scrapeMetrics GETs /metrics on n's admin endpoint and parses the samples.
func scrapeMetrics(n *clusterNode) ([]metricSample, string, error) {
	resp, err := adminClient.Get("http://" + n.admin + "/metrics")
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, string(raw), fmt.Errorf("GET /metrics on %s: %s", n.name, resp.Status)
	}
	var out []metricSample
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		head := line[:i]
		s := metricSample{name: head, value: v}
		if j := strings.IndexByte(head, '{'); j >= 0 && strings.HasSuffix(head, "}") {
			s.name, s.labels = head[:j], head[j+1:len(head)-1]
		}
		out = append(out, s)
	}
	return out, string(raw), nil
}

// metricValue returns the value of the sample named name whose labels
// contain every one of want (`k="v"`), and whether there is one.
func metricValue(samples []metricSample, name string, want ...string) (float64, bool) {
	for _, s := range samples {
		if s.name != name {
			continue
		}
		ok := true
		for _, w := range want {
			if !strings.Contains(s.labels, w) {
				ok = false
			}
		}
		if ok {
			return s.value, true
		}
	}
	return 0, false
}
