package integration

// Helpers of the tests of a cluster that changes (dynamic_test.go): groups
// whose names differ between nodes, groups added by a reload, members
// removed by a reload, failed reloads. These tests use SAN addresses of
// their own (127.0.5.x, port 7946), so that they can run while another
// `go test` runs the cluster tests (127.0.0.2-9) or the fault tests
// (127.0.3.x, 127.0.4.x). Names start with dyn.

import (
	"bytes"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// dynMembers returns n members n1..nn with SAN addresses 127.0.5.2:7946,
// 127.0.5.3:7946, ...
func dynMembers(n int) []clusterMember { return ftMembers(5, n) }

// dynSite is one site of a node: http://127.0.0.1:<port> served by the
// shardcache handler from root.
type dynSite struct {
	port   int
	root   string
	group  string // "": no group line (the default group, the root path)
	memory string // default 64MiB
	hot    string // default 8MiB
}

func (s dynSite) base() string { return fmt.Sprintf("http://127.0.0.1:%d", s.port) }

// block returns the site's Caddyfile block.
func (s dynSite) block() string {
	if s.memory == "" {
		s.memory = "64MiB"
	}
	if s.hot == "" {
		s.hot = "8MiB"
	}
	group := ""
	if s.group != "" {
		group = "\t\tgroup " + s.group + "\n"
	}
	return fmt.Sprintf(`
http://127.0.0.1:%d {
	bind 127.0.0.1
	shardcache {
		root %s
%s		memory %s
		hot %s
	}
}
`, s.port, s.root, group, s.memory, s.hot)
}

// dynNodeSpec is what makes one node's Caddyfile.
type dynNodeSpec struct {
	self    clusterMember
	members []clusterMember // every member, self included
	admin   string
	sites   []dynSite
	extra   string // appended as is (more sites)
}

// caddyfile returns the node's Caddyfile: the shardcache global option
// (the secret from the environment, fetch_timeout 2s, the admin endpoint's
// request lines left out of the log) and its sites.
func (s dynNodeSpec) caddyfile() string {
	var b strings.Builder
	// grace_period 1s: at SIGTERM, Caddy 2.11.9's HTTP shutdown was seen
	// waiting its whole grace period (5 s, then the harness's limit) for a
	// connection the tests' clients left, with a goroutine dump showing no
	// request in progress in our handler; these tests are not about
	// shutdown.
	b.WriteString(globalBlock(s.admin, ftQuietAdmin, "grace_period 1s",
		shardcacheOption(s.self, s.members, "{env."+clusterSecretEnv+"}", "fetch_timeout 2s")))
	for _, site := range s.sites {
		b.WriteString(site.block())
	}
	b.WriteString(s.extra)
	return b.String()
}

// dynSpecs returns the specs of a cluster of members with one site each:
// roots[i] on a free port, in group (every node the same; "" for no group
// line), and a free admin port.
func dynSpecs(t *testing.T, members []clusterMember, roots []string, group string) []dynNodeSpec {
	t.Helper()
	specs := make([]dynNodeSpec, len(members))
	for i, m := range members {
		specs[i] = dynNodeSpec{
			self:    m,
			members: members,
			admin:   fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			sites:   []dynSite{{port: freePort(t), root: roots[i], group: group}},
		}
	}
	return specs
}

// dynStart starts one Caddy process per spec, all at once, and waits until
// each answers HTTP on its admin endpoint and sites. The clusterNode's base
// and root are those of the spec's first site.
func dynStart(t *testing.T, g *nodeGroup, specs []dynNodeSpec) []*clusterNode {
	t.Helper()
	nodes := make([]*clusterNode, len(specs))
	for i, s := range specs {
		nodes[i] = g.launch(s.self.name, s.self.san, s.sites[0].base(), s.sites[0].root, s.caddyfile())
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range nodes {
		n.waitUp(n.caddyfile, deadline)
	}
	return nodes
}

// dynGroup returns the status of the group named name in st.
func dynGroup(st clusterStatus, name string) (clusterGroupStatus, bool) {
	for _, g := range st.Groups {
		if g.Group == name {
			return g, true
		}
	}
	return clusterGroupStatus{}, false
}

// dynWaitKnown waits up to 5s until every node's primed items plus its
// table of content for group add up to want. It does not work around
// incomplete tables (no healTOCs): it reports them as a failure and
// returns false.
func dynWaitKnown(t *testing.T, nodes []*clusterNode, group string, want int) bool {
	t.Helper()
	counts := func() (string, bool) {
		var b strings.Builder
		all := true
		for _, n := range nodes {
			st, ok := tryStatus(n)
			g, found := dynGroup(st, group)
			if !ok || !found || g.PrimedItems+g.TOCItems != int64(want) {
				all = false
			}
			fmt.Fprintf(&b, "%s: primed %d + table of content %d (group %q found: %v); ", n.name, g.PrimedItems, g.TOCItems, group, found)
		}
		return b.String(), all
	}
	ok, _ := pollEvery(5*time.Second, 50*time.Millisecond, func() bool { _, all := counts(); return all })
	if !ok {
		c, _ := counts()
		t.Errorf("the nodes do not know the %d items of group %q 5s after the cluster is ready: %s", want, group, c)
	}
	return ok
}

// dynOutcome is what one GET of a site's file gave.
type dynOutcome struct {
	node, path string
	status     int
	err        error
	got        []byte
	want       []byte
}

func (o dynOutcome) ok() bool {
	return o.err == nil && o.status == http.StatusOK && bytes.Equal(o.got, o.want)
}

func (o dynOutcome) String() string {
	if o.err != nil {
		return fmt.Sprintf("%s: GET %s: %v", o.node, o.path, o.err)
	}
	if o.status == http.StatusOK {
		return fmt.Sprintf("%s: GET %s: 200 with %s, want %d bytes %s", o.node, o.path, clusterPreview(o.got), len(o.want), clusterPreview(o.want))
	}
	return fmt.Sprintf("%s: GET %s: %d %s (the file exists: %d bytes)", o.node, o.path, o.status, clusterPreview(o.got), len(o.want))
}

// dynGet GETs path from base (the node name for reports) and compares the
// body with the site's file.
func dynGet(name, base, p string, site clusterSite) dynOutcome {
	o := dynOutcome{node: name, path: p, want: site.file(p)}
	r, err := do(http.MethodGet, base, p)
	if err != nil {
		o.err = err
		return o
	}
	o.status, o.got = r.status, r.body
	return o
}

// dynTally sorts outcomes into good ones and failures, and counts the
// failures by status.
type dynTally struct {
	requests int
	bad      []dynOutcome
	byStatus map[string]int
}

func (d *dynTally) add(o dynOutcome) {
	d.requests++
	if !o.ok() {
		d.fail(o)
	}
}

// fail records a failure (the request is counted by the caller).
func (d *dynTally) fail(o dynOutcome) {
	if d.byStatus == nil {
		d.byStatus = map[string]int{}
	}
	k := fmt.Sprint(o.status)
	switch {
	case o.err != nil:
		k = "transport error"
	case o.status == http.StatusOK:
		k = "200 with wrong bytes"
	}
	d.byStatus[k]++
	d.bad = append(d.bad, o)
}

// report fails the test with the failures (the first 10 of them), if any.
func (d *dynTally) report(t *testing.T, what string) {
	t.Helper()
	if len(d.bad) == 0 {
		return
	}
	var b strings.Builder
	for i, o := range d.bad {
		if i == 10 {
			fmt.Fprintf(&b, "  ... and %d more\n", len(d.bad)-10)
			break
		}
		b.WriteString("  " + o.String() + "\n")
	}
	t.Errorf("%s: %d of %d requests failed (%v):\n%s", what, len(d.bad), d.requests, d.byStatus, b.String())
}

// dynServeAll GETs every file of site from every node's site at bases[i]
// once (8 at a time) and tallies the outcomes.
func dynServeAll(nodes []*clusterNode, bases []string, site clusterSite) *dynTally {
	paths := site.paths()
	outs := make([]dynOutcome, len(nodes)*len(paths))
	forEachParallel(len(outs), 8, func(i int) {
		ni, pi := i/len(paths), i%len(paths)
		outs[i] = dynGet(nodes[ni].name, bases[ni], paths[pi], site)
	})
	d := &dynTally{}
	for _, o := range outs {
		d.add(o)
	}
	return d
}

// dynPollAll GETs every file of site from every node's site at bases[i]
// until each has answered 200 with its bytes once, for at most wait (and
// 400 rounds). Any 404 or 200 with wrong bytes on the way is a failure
// (tallied); other statuses and transport errors are retried (and logged).
// It returns the tally and whether every file was served in time.
func dynPollAll(t *testing.T, nodes []*clusterNode, bases []string, site clusterSite, wait time.Duration) (*dynTally, bool) {
	t.Helper()
	type key struct{ ni, pi int }
	paths := site.paths()
	pending := map[key]bool{}
	for ni := range nodes {
		for pi := range paths {
			pending[key{ni, pi}] = true
		}
	}
	d := &dynTally{}
	retried := map[string]int{}
	deadline := time.Now().Add(wait)
	for round := 0; round < 400 && len(pending) > 0; round++ {
		keys := make([]key, 0, len(pending))
		for k := range pending {
			keys = append(keys, k)
		}
		outs := make([]dynOutcome, len(keys))
		forEachParallel(len(keys), 8, func(i int) {
			k := keys[i]
			outs[i] = dynGet(nodes[k.ni].name, bases[k.ni], paths[k.pi], site)
		})
		for i, o := range outs {
			switch {
			case o.ok():
				d.requests++
				delete(pending, keys[i])
			case o.err == nil && (o.status == http.StatusNotFound || o.status == http.StatusOK):
				d.add(o)
			default:
				retried[fmt.Sprintf("%d %v", o.status, o.err)]++
			}
		}
		if len(pending) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(retried) > 0 {
		t.Logf("answers retried (neither 200 nor 404): %v", retried)
	}
	if len(pending) > 0 {
		var ex []string
		for k := range pending {
			if len(ex) == 5 {
				break
			}
			ex = append(ex, nodes[k.ni].name+" "+paths[k.pi])
		}
		t.Errorf("%d of %d (node, file) pairs not served 200 with the file's bytes within %s, e.g. %s",
			len(pending), len(nodes)*len(paths), wait, strings.Join(ex, ", "))
	}
	return d, len(pending) == 0
}

// dynMentions reports whether the log entry's text names word as a whole
// word.
func dynMentions(e logEntry, word string) bool {
	return regexp.MustCompile(`(^|[^A-Za-z0-9_])` + regexp.QuoteMeta(word) + `($|[^A-Za-z0-9_])`).MatchString(e.String())
}
