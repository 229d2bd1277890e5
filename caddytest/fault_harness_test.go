package integration

// Helpers of the fault-tolerance and hostile-input tests (fault_test.go,
// hostile_test.go): clusters with `replicas`, `lan` and an `X-Node` header,
// a content director, a bounded HTTP load that checks every body byte for
// byte, status and RSS samplers, and raw QUIC clients of the SAN port.
//
// These tests use SAN addresses of their own (127.0.3.x and 127.0.4.x, port
// 7946), so that they can run while another `go test` runs the cluster and
// director tests on 127.0.0.2-9. Names start with ft to stay clear of the
// other test files of the package.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/shardcache/caddy-shardcache/peering"
)

// ftMembers returns n members n1..nn with SAN addresses 127.0.<net>.2:7946,
// 127.0.<net>.3:7946, ...
func ftMembers(netw, n int) []clusterMember {
	out := make([]clusterMember, n)
	for i := range out {
		out[i] = clusterMember{name: fmt.Sprintf("n%d", i+1), san: fmt.Sprintf("127.0.%d.%d:7946", netw, i+2)}
	}
	return out
}

// ftNodeOpts makes one content node's Caddyfile.
type ftNodeOpts struct {
	self     clusterMember
	members  []clusterMember // every member, self included
	admin    string          // 127.0.0.1:port
	port     int             // the site's port on 127.0.0.1
	root     string
	memory   string // default 64MiB
	hot      string // default 8MiB
	replicas int    // 0: not written
	lan      bool   // advertise lan 127.0.0.1:<port>
	fetch    string // fetch_timeout, default 2s
	secret   string // the secret line's value, default {env.SHARDCACHE_SECRET}
	// extraSites is appended to the Caddyfile as is.
	extraSites string
}

// ftQuietAdmin keeps the admin endpoint's request lines out of the log:
// the tests poll it every few milliseconds.
const ftQuietAdmin = "log default {\n\t\texclude admin.api\n\t}"

// ftNodeCaddyfile returns a content node's Caddyfile: the shardcache global
// option and one site that says which node served it (X-Node).
func ftNodeCaddyfile(o ftNodeOpts) string {
	if o.fetch == "" {
		o.fetch = "2s"
	}
	if o.secret == "" {
		o.secret = "{env." + clusterSecretEnv + "}"
	}
	var extra []string
	if o.lan {
		extra = append(extra, fmt.Sprintf("lan 127.0.0.1:%d", o.port))
	}
	if o.replicas > 0 {
		extra = append(extra, fmt.Sprintf("replicas %d", o.replicas))
	}
	extra = append(extra, "fetch_timeout "+o.fetch)
	return globalBlock(o.admin, ftQuietAdmin, shardcacheOption(o.self, o.members, o.secret, extra...)) +
		clusterSiteBlock(o.port, o.root, o.memory, o.hot, "X-Node "+o.self.name) + o.extraSites
}

// ftDirectorCaddyfile returns a director's Caddyfile: an observer at san of
// the members, proxying http://127.0.0.1:<port> to the members' sites with
// lb_policy shardcache.
func ftDirectorCaddyfile(admin, san string, port int, members []clusterMember, nodePorts []int) string {
	return globalBlock(admin, ftQuietAdmin, observerOption(san, members)) + fmt.Sprintf(`
http://127.0.0.1:%d {
	bind 127.0.0.1
	reverse_proxy %s {
		lb_policy shardcache
	}
}
`, port, upstreams(nodePorts))
}

// ftKill sends SIGKILL to n and waits for it to exit.
func ftKill(t *testing.T, n *clusterNode) {
	t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %s (pid %d): %v", n.name, n.cmd.Process.Pid, err)
	}
	select {
	case <-n.exited:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s (pid %d) still running 5s after SIGKILL", n.name, n.cmd.Process.Pid)
	}
}

// ftSeesReady reports whether n's status shows every one of names up and
// ready.
func ftSeesReady(n *clusterNode, names ...string) bool {
	st, ok := tryStatus(n)
	if !ok {
		return false
	}
	for _, name := range names {
		m, ok := st.member(name)
		if !ok || !m.Up || !m.Ready {
			return false
		}
	}
	return true
}

// ftWaitReady waits (at most timeout) until every content node is ready
// and sees the others up and ready, and every observer sees every content
// node up and ready.
func ftWaitReady(t *testing.T, timeout time.Duration, content []*clusterNode, observers ...*clusterNode) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var names []string
	for _, n := range content {
		names = append(names, n.name)
	}
	check := func() (bool, string) {
		for _, n := range content {
			st, ok := tryStatus(n)
			if !ok || !st.Ready {
				return false, n.name + " not ready"
			}
			for _, o := range names {
				if o == n.name {
					continue
				}
				if m, ok := st.member(o); !ok || !m.Up || !m.Ready {
					return false, fmt.Sprintf("%s sees %s as %+v", n.name, o, m)
				}
			}
		}
		for _, o := range observers {
			if !ftSeesReady(o, names...) {
				st, _ := tryStatus(o)
				return false, fmt.Sprintf("%s sees %+v", o.name, st.Members)
			}
		}
		return true, ""
	}
	for {
		ok, why := check()
		if ok {
			return
		}
		for _, n := range append(append([]*clusterNode{}, content...), observers...) {
			select {
			case <-n.exited:
				t.Fatalf("%s exited while waiting for the cluster: %v\n%s", n.name, n.waitErr, n.logDigest())
			default:
			}
		}
		if time.Now().After(deadline) {
			for _, n := range append(append([]*clusterNode{}, content...), observers...) {
				t.Logf("%s's log:\n%s", n.name, n.logDigest())
			}
			t.Fatalf("the cluster was not ready within %s: %s", timeout, why)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// The load.

// ftTarget is where a share of the load goes.
type ftTarget struct {
	name    string // for reports: "director", "n1", ...
	base    string // http://127.0.0.1:port
	workers int
}

// ftResult is one request of the load.
type ftResult struct {
	target int       // index in the targets
	at     time.Time // when it was sent
	done   time.Time // when its body was read (or it failed)
	path   string    // the URL path
	status int       // 0 on a transport error
	err    string    // the transport error
	wrong  bool      // 200 with other bytes than the file's
	node   string    // the X-Node header (which content node answered)
	size   int       // body bytes read
}

func (r ftResult) failed() bool { return r.status != http.StatusOK || r.err != "" }

func (r ftResult) String() string {
	s := fmt.Sprintf("GET %s at %s: ", r.path, r.at.Format("15:04:05.000"))
	if r.err != "" {
		return s + r.err
	}
	return s + fmt.Sprintf("%d (%d bytes, X-Node %q, wrong %v, %s)", r.status, r.size, r.node, r.wrong, r.done.Sub(r.at).Round(time.Millisecond))
}

// ftLoad is a bounded HTTP load: workers GET random paths of a site from
// their targets until stopped, the budget of requests is spent or the time
// limit passes, and check every body byte for byte.
type ftLoad struct {
	targets []ftTarget
	started time.Time
	stopc   chan struct{}
	wg      sync.WaitGroup
	budget  atomic.Int64
	mu      sync.Mutex
	results []ftResult
	tr      *http.Transport
}

// ftStartLoad starts the load over the given paths of site: at most budget
// requests, for at most limit.
func ftStartLoad(targets []ftTarget, site clusterSite, paths []string, budget int64, limit time.Duration) *ftLoad {
	l := &ftLoad{targets: targets, started: time.Now(), stopc: make(chan struct{})}
	l.budget.Store(budget)
	l.tr = &http.Transport{
		DisableCompression:  true,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     30 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
	}
	c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: noRedirects, Transport: l.tr}
	timer := time.AfterFunc(limit, l.halt)
	seed := uint64(time.Now().UnixNano())
	for ti, tg := range targets {
		for w := 0; w < tg.workers; w++ {
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				r := mrand.New(mrand.NewPCG(seed, uint64(ti*1000+w)))
				var mine []ftResult
				defer func() {
					l.mu.Lock()
					l.results = append(l.results, mine...)
					l.mu.Unlock()
				}()
				for {
					select {
					case <-l.stopc:
						return
					default:
					}
					if l.budget.Add(-1) < 0 {
						return
					}
					p := paths[r.IntN(len(paths))]
					mine = append(mine, ftGet(c, ti, tg.base, p, site.file(p)))
				}
			}()
		}
	}
	go func() {
		l.wg.Wait()
		timer.Stop()
	}()
	return l
}

func (l *ftLoad) halt() {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
}

// stop ends the load and returns every request, in the order sent.
func (l *ftLoad) stop() []ftResult {
	l.halt()
	l.wg.Wait()
	l.tr.CloseIdleConnections()
	l.mu.Lock()
	defer l.mu.Unlock()
	sort.Slice(l.results, func(i, j int) bool { return l.results[i].at.Before(l.results[j].at) })
	return l.results
}

// wait waits until the load ends by itself (budget or time limit).
func (l *ftLoad) wait() []ftResult {
	l.wg.Wait()
	return l.stop()
}

// ftGet GETs base+p and checks the body against want.
func ftGet(c *http.Client, target int, base, p string, want []byte) ftResult {
	res := ftResult{target: target, at: time.Now(), path: p}
	resp, err := c.Get(base + p)
	if err != nil {
		res.done = time.Now()
		res.err = err.Error()
		return res
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	resp.Body.Close()
	res.done = time.Now()
	res.status = resp.StatusCode
	res.node = resp.Header.Get("X-Node")
	res.size = len(body)
	if err != nil {
		res.err = "reading body: " + err.Error()
		return res
	}
	if resp.StatusCode == http.StatusOK && !bytes.Equal(body, want) {
		res.wrong = true
	}
	return res
}

// ftSummary counts results per target.
type ftSummary struct {
	sent, failed, wrong int
}

func ftSummarize(rs []ftResult, keep func(ftResult) bool) ftSummary {
	var s ftSummary
	for _, r := range rs {
		if keep != nil && !keep(r) {
			continue
		}
		s.sent++
		if r.failed() {
			s.failed++
		}
		if r.wrong {
			s.wrong++
		}
	}
	return s
}

// ftStatusCounts counts the failures by status (or transport error).
func ftStatusCounts(rs []ftResult) string {
	m := map[string]int{}
	for _, r := range rs {
		if !r.failed() {
			continue
		}
		k := fmt.Sprint(r.status)
		if r.err != "" {
			k = "transport error"
			if strings.Contains(r.err, "connection refused") {
				k = "connection refused"
			} else if strings.Contains(r.err, "connection reset") {
				k = "connection reset"
			} else if strings.Contains(r.err, "EOF") {
				k = "EOF"
			}
		}
		m[k]++
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s: %d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// RSS sampling.

// ftRSSSampler samples a process's VmRSS every interval until stopped.
type ftRSSSampler struct {
	stopc chan struct{}
	done  chan struct{}
	max   atomic.Int64
	n     atomic.Int64
}

func ftSampleRSS(pid int, every time.Duration) *ftRSSSampler {
	s := &ftRSSSampler{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if v, _ := readRSS(pid); v > 0 {
				s.n.Add(1)
				if v > s.max.Load() {
					s.max.Store(v)
				}
			}
			select {
			case <-s.stopc:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop returns the largest sample (bytes) and the number of samples.
func (s *ftRSSSampler) stop() (int64, int64) {
	close(s.stopc)
	<-s.done
	return s.max.Load(), s.n.Load()
}

// Raw QUIC clients of the SAN port.

// ftDial opens a QUIC connection to addr with tc from a loopback socket of
// its own. close releases the connection and the socket.
func ftDial(ctx context.Context, addr string, tc *tls.Config) (conn *quic.Conn, close func(), err error) {
	return dialSAN(ctx, addr, tc, &quic.Config{
		HandshakeIdleTimeout: 2 * time.Second,
		MaxIdleTimeout:       20 * time.Second,
		KeepAlivePeriod:      time.Second,
		Versions:             []quic.Version{quic.Version1},
	})
}

// ftItem appends one item of a TOC/UPSERT payload (with variants: none).
func ftItem(b []byte, p, version string, size int64) []byte {
	b = sanStr(b, p)
	b = sanStr(b, version)
	b = binary.AppendUvarint(b, uint64(size))
	b = sanStr(b, "application/octet-stream")
	b = binary.AppendVarint(b, fixedTime.UnixNano())
	b = sanStr(b, `"`+version+`"`)
	b = sanStr(b, "")                 // encoding
	return binary.AppendUvarint(b, 0) // no variants
}

// ftStreamOutcome sends data on a fresh stream of conn (closing its side if
// fin) and reads the answer for at most wait: the bytes, and how the
// stream ended (nil: EOF; a *quic.StreamError: reset, with its code).
func ftStreamOutcome(conn *quic.Conn, data []byte, fin bool, wait time.Duration) ([]byte, error, time.Duration) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err), time.Since(start)
	}
	_ = str.SetDeadline(time.Now().Add(wait))
	if len(data) > 0 {
		if _, err := str.Write(data); err != nil {
			return nil, fmt.Errorf("write: %w", err), time.Since(start)
		}
	}
	if fin {
		_ = str.Close()
	}
	got, err := io.ReadAll(io.LimitReader(str, 8<<20))
	str.CancelRead(0)
	str.CancelWrite(0)
	return got, err, time.Since(start)
}

// ftResetCode returns the code of a stream reset by the peer, or -1.
func ftResetCode(err error) int64 {
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote {
		return int64(se.ErrorCode)
	}
	return -1
}

// ftProbeCreds returns credentials from the cluster CA for name.
func ftProbeCreds(t *testing.T, secret, name string) *peering.Credentials {
	t.Helper()
	c, err := peering.CredentialsFromSecret(secret, name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
