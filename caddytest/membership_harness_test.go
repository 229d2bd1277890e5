package integration

// Helpers of the tests of a membership found in DNS (membership_test.go):
// a DNS server in the test process whose SRV and A records the test
// changes, nodes whose Caddyfiles have no `peer` line (only `peers srv`),
// a director that finds them the same way, and a watch of the files each
// node opens on its own copy of the site (inotify), which tells reads of
// storage from handoffs out of a peer's memory without asking the node.
//
// These tests use SAN addresses of their own, 127.0.31.x:7946 (the
// director at 127.0.31.10), so that they can run while another `go test`
// runs the other cluster tests. Names start with mb.

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// mbNet is the third octet of the SAN addresses: ftMembers(mbNet, n).
const mbNet = 31

// mbDirectorSAN is the director's SAN address.
const mbDirectorSAN = "127.0.31.10:7946"

// mbZone is the DNS zone of the test cluster, mbSRV the SRV name the
// nodes look up.
const (
	mbZone = "www.test."
	mbSRV  = "_shardcache._udp." + mbZone
)

// mbDNS is a DNS server on 127.0.0.1 (UDP and TCP on one port) answering
// for mbZone: SRV records of mbSRV (one per target) and A records of the
// targets. The test changes the targets and the mode.
type mbDNS struct {
	addr string

	mu      sync.Mutex
	targets []string          // SRV targets, FQDNs ("n1.www.test.")
	port    uint16            // the SRV records' port
	a       map[string]string // FQDN → IPv4
	mode    string            // "": answer; "servfail": SERVFAIL to all; "empty": mbSRV has no records
	queries map[string]int    // "mode qtype name" → count
}

// mbStartDNS starts the server; it stops when the test ends.
func mbStartDNS(t *testing.T) *mbDNS {
	t.Helper()
	d := &mbDNS{a: map[string]string{}, queries: map[string]int{}, port: 7946}
	var pc net.PacketConn
	var l net.Listener
	for range 20 {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no port free for both UDP and TCP on 127.0.0.1")
	}
	d.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: d}, {Listener: l, Handler: d}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return d
}

// ServeDNS answers one question.
func (d *mbDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if len(r.Question) != 1 {
		return
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	d.mu.Lock()
	mode := d.mode
	d.queries[fmt.Sprintf("%s %s %s", mode, dns.TypeToString[q.Qtype], name)]++
	targets := slices.Clone(d.targets)
	ip, hasA := d.a[name]
	port := d.port
	d.mu.Unlock()

	m := new(dns.Msg)
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: 1}
	}
	switch {
	case mode == "servfail":
		m.SetRcode(r, dns.RcodeServerFailure)
	case name == mbSRV:
		m.SetReply(r)
		m.Authoritative = true // else an empty answer is a lame referral to Go
		if q.Qtype == dns.TypeSRV && mode != "empty" {
			for _, tg := range targets {
				m.Answer = append(m.Answer, &dns.SRV{Hdr: hdr(dns.TypeSRV), Priority: 10, Weight: 10, Port: port, Target: tg})
			}
		}
	case hasA:
		m.SetReply(r)
		m.Authoritative = true
		if q.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: net.ParseIP(ip)})
		}
	default:
		m.SetRcode(r, dns.RcodeNameError)
		m.Authoritative = true
	}
	if w.RemoteAddr().Network() == "udp" {
		size := dns.MinMsgSize
		if o := r.IsEdns0(); o != nil {
			size = int(o.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

// setA gives the member m an A record (its SAN host) under mbZone.
func (d *mbDNS) setA(m clusterMember) {
	host, _, _ := net.SplitHostPort(m.san)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.a[m.name+"."+mbZone] = host
}

// setTargets makes the SRV answer list the members named.
func (d *mbDNS) setTargets(names ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.targets = nil
	for _, n := range names {
		d.targets = append(d.targets, n+"."+mbZone)
	}
}

func (d *mbDNS) setMode(mode string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mode = mode
}

// srvQueries is how many SRV questions for mbSRV came in while in mode.
func (d *mbDNS) srvQueries(mode string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries[fmt.Sprintf("%s SRV %s", mode, mbSRV)]
}

// mbPeersBlock is the `peers srv` block of every node and of the director.
func mbPeersBlock(resolver string) string {
	return fmt.Sprintf("peers srv %s {\n\t\t\trefresh 500ms\n\t\t\tresolvers %s\n\t\t\tgrace 5s\n\t\t}",
		strings.TrimSuffix(mbSRV, "."), resolver)
}

// mbNodeSpec makes one content node's Caddyfile.
type mbNodeSpec struct {
	self  clusterMember
	admin string
	port  int
	root  string
	// static are members also written as `peer` lines (none: DNS only).
	static []clusterMember
}

func (s mbNodeSpec) base() string { return fmt.Sprintf("http://127.0.0.1:%d", s.port) }

// caddyfile returns the node's Caddyfile: node, `peers srv` (no `peer`
// line), the secret from the environment, lan, fetch_timeout 2s; one site
// that says which node served it (X-Node).
func (s mbNodeSpec) caddyfile(resolver string) string {
	return globalBlock(s.admin, ftQuietAdmin, "grace_period 1s",
		shardcacheOption(s.self, append([]clusterMember{s.self}, s.static...), "{env."+clusterSecretEnv+"}",
			mbPeersBlock(resolver), fmt.Sprintf("lan 127.0.0.1:%d", s.port), "fetch_timeout 2s")) +
		clusterSiteBlock(s.port, s.root, "64MiB", "8MiB", "X-Node "+s.self.name)
}

// mbDirectorCaddyfile is a director (an observer) that finds the members
// in DNS and whose reverse_proxy lists no upstream.
func mbDirectorCaddyfile(admin, resolver string, port int) string {
	self := clusterMember{name: "director", san: mbDirectorSAN}
	return globalBlock(admin, ftQuietAdmin, "grace_period 1s",
		shardcacheOption(self, []clusterMember{self}, "{env."+clusterSecretEnv+"}", "observer", mbPeersBlock(resolver))) +
		fmt.Sprintf(`
http://127.0.0.1:%d {
	bind 127.0.0.1
	reverse_proxy {
		dynamic shardcache
		lb_policy shardcache
		lb_try_duration 2s
	}
}
`, port)
}

// mbRing returns the ring n's status lists.
func mbRing(n *clusterNode) ([]string, error) {
	var st struct {
		Ring []string `json:"ring"`
	}
	if err := n.adminGet("/shardcache/status", &st); err != nil {
		return nil, err
	}
	return st.Ring, nil
}

// mbRingsAre reports whether every node's ring is want (sorted), and
// describes the rings seen.
func mbRingsAre(nodes []*clusterNode, want []string) (bool, string) {
	var b strings.Builder
	all := true
	for _, n := range nodes {
		r, err := mbRing(n)
		r = slices.Clone(r)
		slices.Sort(r)
		if err != nil || !slices.Equal(r, want) {
			all = false
		}
		fmt.Fprintf(&b, "%s: %v (err %v); ", n.name, r, err)
	}
	return all, b.String()
}

// mbLogCount is how many of n's log lines have the message msg.
func mbLogCount(n *clusterNode, msg string) int {
	return len(n.findLogs(func(e logEntry) bool { return e.str("msg") == msg }))
}

// mbShareMoved is one "share moved to the new ring" log line.
type mbShareMoved struct {
	items, fromPeers, fromStorage int64
}

// mbSharesMoved returns n's "share moved to the new ring" lines after the
// first skip of them.
func mbSharesMoved(n *clusterNode, skip int) []mbShareMoved {
	var out []mbShareMoved
	for i, e := range n.findLogs(func(e logEntry) bool { return e.str("msg") == "share moved to the new ring" }) {
		if i < skip {
			continue
		}
		it, _ := e.num("items")
		fp, _ := e.num("from_peers_memory")
		fs, _ := e.num("read_from_storage")
		out = append(out, mbShareMoved{int64(it), int64(fp), int64(fs)})
	}
	return out
}

// Opens of files on storage.

// mbOpen is one file opened under a watched root.
type mbOpen struct {
	path string // URL path: "/docs/a.html"
	at   time.Time
}

// mbOpenWatch records every file opened under a root (inotify IN_OPEN on
// each of its directories), by any process. A node's reads of its own
// copy of the site are opens of its files; stat, listing a directory and
// a handoff out of a peer's memory open none.
type mbOpenWatch struct {
	root     string
	fd       int
	dirs     map[int32]string // watch descriptor → directory, relative, slash-separated
	stopc    chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	opens    []mbOpen
	overflow bool
}

// mbWatchOpens starts watching root (its directories as they are now).
// The watch ends when the test does.
func mbWatchOpens(t *testing.T, root string) *mbOpenWatch {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatalf("inotify_init1: %v", err)
	}
	w := &mbOpenWatch{root: root, fd: fd, dirs: map[int32]string{}, stopc: make(chan struct{}), done: make(chan struct{})}
	err = filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil || !de.IsDir() {
			return err
		}
		wd, err := unix.InotifyAddWatch(fd, p, unix.IN_OPEN)
		if err != nil {
			return fmt.Errorf("inotify_add_watch %s: %w", p, err)
		}
		rel, _ := filepath.Rel(root, p)
		w.dirs[int32(wd)] = filepath.ToSlash(rel)
		return nil
	})
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	go w.run()
	t.Cleanup(w.stop)
	return w
}

func (w *mbOpenWatch) run() {
	defer close(w.done)
	buf := make([]byte, 64<<10)
	for {
		select {
		case <-w.stopc:
			return
		default:
		}
		fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 50); err != nil || n == 0 {
			continue
		}
		n, err := unix.Read(w.fd, buf)
		if err != nil || n <= 0 {
			continue
		}
		now := time.Now()
		var got []mbOpen
		overflow := false
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				overflow = true
				continue
			}
			if ev.Mask&unix.IN_ISDIR != 0 || ev.Len == 0 {
				continue // a directory listed
			}
			name := strings.TrimRight(string(nameBytes), "\x00")
			got = append(got, mbOpen{path: "/" + path.Join(w.dirs[ev.Wd], name), at: now})
		}
		w.mu.Lock()
		w.opens = append(w.opens, got...)
		w.overflow = w.overflow || overflow
		w.mu.Unlock()
	}
}

func (w *mbOpenWatch) stop() {
	select {
	case <-w.stopc:
		return
	default:
	}
	close(w.stopc)
	<-w.done
	unix.Close(w.fd)
}

// between returns the files opened in [from, to), after letting the
// watch read what the kernel has queued.
func (w *mbOpenWatch) between(from, to time.Time) (opens []mbOpen, overflow bool) {
	time.Sleep(150 * time.Millisecond)
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, o := range w.opens {
		if !o.at.Before(from) && o.at.Before(to) {
			opens = append(opens, o)
		}
	}
	return opens, w.overflow
}

// mbOpenSummary counts opens (and the bytes of the files opened, each
// open counted) of the paths for which in is true, and of the others.
type mbOpenSummary struct {
	in, out           int
	inBytes, outBytes int64
	inDistinct        int
	examples          []string
}

func mbSummarize(opens []mbOpen, site clusterSite, in func(p string) bool) mbOpenSummary {
	var s mbOpenSummary
	seen := map[string]bool{}
	for _, o := range opens {
		size := int64(len(site.file(o.path)))
		if in(o.path) {
			s.in++
			s.inBytes += size
			if !seen[o.path] {
				seen[o.path] = true
				s.inDistinct++
			}
			if len(s.examples) < 5 {
				s.examples = append(s.examples, o.path)
			}
		} else {
			s.out++
			s.outBytes += size
		}
	}
	return s
}

// mbGroup returns the test group's status on n.
func mbGroup(t *testing.T, n *clusterNode) clusterGroupStatus {
	t.Helper()
	return n.status(t).group()
}

// mbJSON formats v for a log line.
func mbJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// mbMemberSampler samples how a node (the director) sees the members: up
// and ready, every interval, until stopped.
type mbMemberSampler struct {
	stopc   chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	samples []mbMemberSample
}

type mbMemberSample struct {
	at    time.Time
	state map[string]string // member → "ready", "not ready", "down"
}

func mbSampleMembers(n *clusterNode, every time.Duration) *mbMemberSampler {
	s := &mbMemberSampler{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			if st, ok := tryStatus(n); ok {
				smp := mbMemberSample{at: time.Now(), state: map[string]string{}}
				for _, m := range st.Members {
					switch {
					case !m.Up:
						smp.state[m.Name] = "down"
					case !m.Ready:
						smp.state[m.Name] = "not ready"
					default:
						smp.state[m.Name] = "ready"
					}
				}
				s.mu.Lock()
				s.samples = append(s.samples, smp)
				s.mu.Unlock()
			}
			select {
			case <-s.stopc:
				return
			case <-time.After(every):
			}
		}
	}()
	return s
}

func (s *mbMemberSampler) stop() {
	select {
	case <-s.stopc:
	default:
		close(s.stopc)
	}
	<-s.done
}

// notReady describes, for each member seen other than ready in [from, to),
// the span from the first to the last such sample and how many samples
// there were (of all samples in the window).
func (s *mbMemberSampler) notReady(from, to time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	type span struct {
		first, last time.Time
		n           int
		states      map[string]bool
	}
	spans := map[string]*span{}
	total := 0
	for _, smp := range s.samples {
		if smp.at.Before(from) || !smp.at.Before(to) {
			continue
		}
		total++
		for name, st := range smp.state {
			if st == "ready" {
				continue
			}
			sp := spans[name]
			if sp == nil {
				sp = &span{first: smp.at, states: map[string]bool{}}
				spans[name] = sp
			}
			sp.last, sp.n = smp.at, sp.n+1
			sp.states[st] = true
		}
	}
	var names []string
	for name := range spans {
		names = append(names, name)
	}
	slices.Sort(names)
	var parts []string
	for _, name := range names {
		sp := spans[name]
		var sts []string
		for st := range sp.states {
			sts = append(sts, st)
		}
		slices.Sort(sts)
		parts = append(parts, fmt.Sprintf("%s %s in %d of %d samples, from +%s to +%s", name, strings.Join(sts, "/"), sp.n, total,
			sp.first.Sub(from).Round(time.Millisecond), sp.last.Sub(from).Round(time.Millisecond)))
	}
	if len(parts) == 0 {
		return fmt.Sprintf("every member ready in all %d samples", total)
	}
	return strings.Join(parts, "; ")
}
