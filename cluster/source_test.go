package cluster

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// testDNS is a DNS server on 127.0.0.1 (UDP and TCP on one port) whose
// answers the test changes. A name it does not know is NXDOMAIN.
type testDNS struct {
	addr string // 127.0.0.1:port

	mu      sync.Mutex
	zone    map[string]*testRecords // by lower-case FQDN
	mode    string                  // "": answer; "servfail"; "drop" (never answer)
	queries []testQuery
}

type testRecords struct {
	ips      []string // A and AAAA
	srv      []string // target:port
	servfail bool     // every question
	failA    bool     // A questions only
}

type testQuery struct {
	name    string
	qtype   uint16
	network string
}

func startTestDNS(t *testing.T) *testDNS {
	t.Helper()
	d := &testDNS{zone: make(map[string]*testRecords)}
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
		t.Fatal("no port free for both UDP and TCP")
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

func (d *testDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if len(r.Question) != 1 {
		return
	}
	q := r.Question[0]
	network := w.RemoteAddr().Network()
	d.mu.Lock()
	d.queries = append(d.queries, testQuery{strings.ToLower(q.Name), q.Qtype, network})
	mode := d.mode
	var recs testRecords
	rp := d.zone[strings.ToLower(q.Name)]
	if rp != nil {
		recs = *rp
	}
	d.mu.Unlock()

	m := new(dns.Msg)
	switch {
	case mode == "drop":
		return
	case mode == "servfail" || recs.servfail || recs.failA && q.Qtype == dns.TypeA:
		m.SetRcode(r, dns.RcodeServerFailure)
	case rp == nil:
		m.SetRcode(r, dns.RcodeNameError)
	default:
		m.SetReply(r)
		m.Authoritative = true // else an empty answer is a lame referral to Go
		hdr := func(t uint16) dns.RR_Header {
			return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET}
		}
		for _, s := range recs.ips {
			ip := net.ParseIP(s)
			switch {
			case ip.To4() != nil && q.Qtype == dns.TypeA:
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: ip})
			case ip.To4() == nil && q.Qtype == dns.TypeAAAA:
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: ip})
			}
		}
		if q.Qtype == dns.TypeSRV {
			for _, s := range recs.srv {
				host, port, _ := net.SplitHostPort(s)
				p, _ := strconv.Atoi(port)
				m.Answer = append(m.Answer, &dns.SRV{Hdr: hdr(dns.TypeSRV), Priority: 10, Weight: 10, Port: uint16(p), Target: host})
			}
		}
	}
	if network == "udp" {
		size := dns.MinMsgSize
		if o := r.IsEdns0(); o != nil {
			size = int(o.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

func (d *testDNS) set(name string, recs testRecords) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.zone[name] = &recs
}

func (d *testDNS) del(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.zone, name)
}

func (d *testDNS) setMode(mode string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mode = mode
}

// count is how many questions for name of type qtype (0: any) came in,
// over network ("": either).
func (d *testDNS) count(name string, qtype uint16, network string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, q := range d.queries {
		if q.name == name && (qtype == 0 || q.qtype == qtype) && (network == "" || q.network == network) {
			n++
		}
	}
	return n
}

// waitQuestions waits until n more questions for name of type qtype have
// come in.
func (d *testDNS) waitQuestions(t *testing.T, name string, qtype uint16, n int) {
	t.Helper()
	want := d.count(name, qtype, "") + n
	deadline := time.Now().Add(5 * time.Second)
	for d.count(name, qtype, "") < want {
		if time.Now().After(deadline) {
			t.Fatalf("%d questions for %s never came", n, name)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// deadResolver is a UDP port on 127.0.0.1 with nobody behind it: a query
// sent there is refused at once.
func deadResolver(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

func member(name, addr string) Member { return Member{Name: name, Addr: addr} }

func lookupCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

const srvName = "_shardcache._udp.www.shardcache.test."

// TestSRVSourceLookup: each SRV target is a node named by its first label
// (lower-cased), at its lowest address with the record's port; the set is
// sorted and de-duplicated; targets that cannot be a node or have no
// address are left out, with a note.
func TestSRVSourceLookup(t *testing.T) {
	d := startTestDNS(t)
	d.set(srvName, testRecords{srv: []string{
		"web-1.www.shardcache.test.:7946",
		"web-0.www.shardcache.test.:7946",
		"Web-2.WWW.shardcache.test.:7947",
		"web-0.www.shardcache.test.:7946", // listed twice
		"web-3.www.shardcache.test.:7946",
		"bad_name.www.shardcache.test.:7946", // not a node name
		"-bad.www.shardcache.test.:7946",     // not a domain name: Go filters it
		"gone.www.shardcache.test.:7946",     // no address
		"web-4.www.shardcache.test.:7946",    // listed with two ports
		"web-4.www.shardcache.test.:7000",
	}})
	d.set("web-0.www.shardcache.test.", testRecords{ips: []string{"10.0.0.10"}})
	d.set("web-1.www.shardcache.test.", testRecords{ips: []string{"fd00::1", "10.0.0.11", "10.0.0.9"}})
	d.set("web-2.www.shardcache.test.", testRecords{ips: []string{"10.0.0.2"}})
	d.set("web-3.www.shardcache.test.", testRecords{ips: []string{"fd00::3"}})
	d.set("web-4.www.shardcache.test.", testRecords{ips: []string{"10.0.0.4"}})
	d.set("bad_name.www.shardcache.test.", testRecords{ips: []string{"10.0.0.99"}})

	s, err := NewSRVSource(srvName, 0, 0, []string{d.addr})
	if err != nil {
		t.Fatal(err)
	}
	if s.Refresh() != DefaultSourceRefresh || s.Grace() != DefaultSourceGrace {
		t.Errorf("defaults: refresh %v grace %v", s.Refresh(), s.Grace())
	}
	got, notes, err := s.lookup(lookupCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []Member{
		member("web-0", "10.0.0.10:7946"),
		member("web-1", "10.0.0.9:7946"), // the lowest of its addresses, IPv4 first
		member("web-2", "10.0.0.2:7947"), // lower-cased
		member("web-3", "[fd00::3]:7946"),
		member("web-4", "10.0.0.4:7000"), // the lowest address of the two
	}
	if !slices.Equal(got, want) {
		t.Errorf("members\n got %v\nwant %v", got, want)
	}
	for _, n := range []string{"bad_name", "gone.www.shardcache.test.", "SRV records filtered", "node web-4 listed at 10.0.0.4:7000 and 10.0.0.4:7946"} {
		if !slices.ContainsFunc(notes, func(s string) bool { return strings.Contains(s, n) }) {
			t.Errorf("no note about %q in %q", n, notes)
		}
	}
	if d.count("web-0.www.shardcache.test.", dns.TypeA, "") != 1 {
		t.Errorf("a target listed twice is resolved once")
	}
	// Lookup is lookup without the notes.
	if got2, err := s.Lookup(lookupCtx(t)); err != nil || !slices.Equal(got2, want) {
		t.Errorf("Lookup: %v, %v", got2, err)
	}
}

// TestDNSSourceLookup: A and AAAA records give nameless members, each
// address with the configured port, sorted (numerically, IPv4 first) and
// de-duplicated.
func TestDNSSourceLookup(t *testing.T) {
	d := startTestDNS(t)
	d.set("www.shardcache.test.", testRecords{ips: []string{"10.0.0.10", "fd00::1", "10.0.0.9", "10.0.0.10"}})
	s, err := NewDNSSource("www.shardcache.test.", 7946, time.Second, time.Second, []string{d.addr})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Lookup(lookupCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []Member{member("", "10.0.0.9:7946"), member("", "10.0.0.10:7946"), member("", "[fd00::1]:7946")}
	if !slices.Equal(got, want) {
		t.Errorf("members\n got %v\nwant %v", got, want)
	}
	if s.String() != "dns www.shardcache.test.:7946" {
		t.Errorf("String: %q", s.String())
	}
	for _, bad := range []int{0, -1, 65536} {
		if _, err := NewDNSSource("www.shardcache.test.", bad, 0, 0, nil); err == nil {
			t.Errorf("port %d accepted", bad)
		}
	}
}

// TestSourceDNSAnswers: a name that does not exist (NXDOMAIN) or has no
// records is a successful empty answer; SERVFAIL, no answer at all, and
// an SRV target whose address lookup fails are errors (the set is
// unknown, not empty).
func TestSourceDNSAnswers(t *testing.T) {
	d := startTestDNS(t)
	srv, err := NewSRVSource(srvName, time.Second, time.Second, []string{d.addr})
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewDNSSource("www.shardcache.test.", 7946, time.Second, time.Second, []string{d.addr})
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, wantErr bool) {
		t.Helper()
		for _, s := range []*DNSSource{srv, a} {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			got, err := s.Lookup(ctx)
			cancel()
			if wantErr && err == nil || !wantErr && err != nil || len(got) != 0 {
				t.Errorf("%s, %v: %v, %v", what, s, got, err)
			}
		}
	}
	check("NXDOMAIN", false)
	d.set(srvName, testRecords{})
	d.set("www.shardcache.test.", testRecords{})
	check("no records", false)
	d.setMode("servfail")
	check("SERVFAIL", true)
	d.setMode("drop")
	check("no answer", true)
	d.setMode("")

	d.set(srvName, testRecords{srv: []string{"web-0.www.shardcache.test.:7946", "web-1.www.shardcache.test.:7946"}})
	d.set("web-0.www.shardcache.test.", testRecords{ips: []string{"10.0.0.1"}})
	d.set("web-1.www.shardcache.test.", testRecords{servfail: true})
	if got, err := srv.Lookup(lookupCtx(t)); err == nil {
		t.Errorf("an SRV target that cannot be resolved: %v, no error", got)
	}

	// The A question fails, the AAAA one finds nothing: a failure, not an
	// empty answer (Go's resolver, unless strict, reports the latter).
	d.set("www.shardcache.test.", testRecords{ips: []string{"10.0.0.1"}, failA: true})
	if got, err := a.Lookup(lookupCtx(t)); err == nil || isNotFound(err) {
		t.Errorf("A failing, AAAA empty: %v, %v", got, err)
	}
	// The A question fails, the AAAA one answers: a failure too, not a
	// set without the IPv4 addresses.
	d.set("www.shardcache.test.", testRecords{ips: []string{"10.0.0.1", "fd00::1"}, failA: true})
	if got, err := a.Lookup(lookupCtx(t)); err == nil {
		t.Errorf("A failing, AAAA answering: %v, no error", got)
	}
}

// TestSRVSourceTruncatedAnswer: an SRV answer too large for UDP is asked
// again over TCP and arrives whole.
func TestSRVSourceTruncatedAnswer(t *testing.T) {
	d := startTestDNS(t)
	var targets []string
	for i := range 60 {
		host := fmt.Sprintf("web-%d.www.shardcache.test.", i)
		targets = append(targets, host+":7946")
		d.set(host, testRecords{ips: []string{fmt.Sprintf("10.0.1.%d", i)}})
	}
	d.set(srvName, testRecords{srv: targets})
	s, err := NewSRVSource(srvName, time.Second, time.Second, []string{d.addr})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Lookup(lookupCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 60 {
		t.Errorf("%d members, want 60", len(got))
	}
	if d.count(srvName, dns.TypeSRV, "tcp") == 0 {
		t.Errorf("the truncated answer was not asked again over TCP")
	}
}

// TestSourceResolvers: every query goes to the configured resolvers, in
// turn, never to the system's; a dead resolver among them costs a retry,
// not the answer; resolver addresses are parsed as reverse_proxy's.
func TestSourceResolvers(t *testing.T) {
	d1, d2 := startTestDNS(t), startTestDNS(t)
	for _, d := range []*testDNS{d1, d2} {
		d.set("www.shardcache.test.", testRecords{ips: []string{"10.0.0.1"}})
	}
	want := []Member{member("", "10.0.0.1:7946")}

	s, err := NewDNSSource("www.shardcache.test.", 7946, time.Second, time.Second, []string{d1.addr, "udp/" + d2.addr})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if got, err := s.Lookup(lookupCtx(t)); err != nil || !slices.Equal(got, want) {
			t.Fatalf("%v, %v", got, err)
		}
	}
	n1, n2 := d1.count("www.shardcache.test.", 0, ""), d2.count("www.shardcache.test.", 0, "")
	if n1 < 5 || n2 < 5 {
		t.Errorf("queries not taken in turn: %d and %d", n1, n2)
	}

	// A dead resolver first: every lookup still answers.
	s, err = NewDNSSource("www.shardcache.test.", 7946, time.Second, time.Second, []string{deadResolver(t), d1.addr})
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if got, err := s.Lookup(lookupCtx(t)); err != nil || !slices.Equal(got, want) {
			t.Fatalf("with a dead resolver first: %v, %v", got, err)
		}
	}

	// Only a dead resolver: an error. Had the system's resolver been
	// asked, it would have answered (NXDOMAIN, an empty set, or worse).
	s, err = NewSRVSource(srvName, time.Second, time.Second, []string{deadResolver(t)})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Lookup(lookupCtx(t)); err == nil {
		t.Errorf("only a dead resolver: %v, no error", got)
	}

	for in, want := range map[string]resolverAddr{
		"127.0.0.1":          {"", "127.0.0.1:53"},
		"127.0.0.1:5353":     {"", "127.0.0.1:5353"},
		"tcp/10.96.0.10":     {"tcp", "10.96.0.10:53"},
		"udp/[fd00::a]:5353": {"udp", "[fd00::a]:5353"},
		"::1":                {"", "[::1]:53"},
		"[::1]":              {"", "[::1]:53"},
	} {
		if got, err := parseResolver(in); err != nil || got != want {
			t.Errorf("parseResolver(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"dns.example", "dns.example:53", "sctp/127.0.0.1", "127.0.0.1:0", "127.0.0.1:x", ""} {
		if _, err := parseResolver(bad); err == nil {
			t.Errorf("parseResolver(%q) accepted", bad)
		}
		if _, err := NewSRVSource(srvName, 0, 0, []string{bad}); err == nil {
			t.Errorf("NewSRVSource with resolver %q accepted", bad)
		}
	}
	if _, err := NewSRVSource(srvName, -time.Second, 0, nil); err == nil {
		t.Errorf("a negative refresh accepted")
	}
}

// watch runs s.Watch until the test ends, its sets sent on the channel.
func watch(t *testing.T, s *DNSSource, log *zap.Logger) chan []Member {
	t.Helper()
	ch := make(chan []Member, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Watch(ctx, log, func(ms []Member) { ch <- ms })
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ch
}

func nextSet(t *testing.T, ch chan []Member) []Member {
	t.Helper()
	select {
	case ms := <-ch:
		return ms
	case <-time.After(5 * time.Second):
		t.Fatal("no change reported")
		return nil
	}
}

func noSet(t *testing.T, ch chan []Member, why string) {
	t.Helper()
	select {
	case ms := <-ch:
		t.Fatalf("%s: change reported: %v", why, ms)
	default:
	}
}

// TestSourceWatchChanges: Watch reports the first answer, then each real
// change once, and nothing for the same records in another order.
func TestSourceWatchChanges(t *testing.T) {
	d := startTestDNS(t)
	d.set("web-0.www.shardcache.test.", testRecords{ips: []string{"10.0.0.1"}})
	d.set("web-1.www.shardcache.test.", testRecords{ips: []string{"10.0.0.2"}})
	d.set("web-2.www.shardcache.test.", testRecords{ips: []string{"10.0.0.3"}})
	d.set(srvName, testRecords{srv: []string{"web-0.www.shardcache.test.:7946", "web-1.www.shardcache.test.:7946"}})
	s, err := NewSRVSource(srvName, 20*time.Millisecond, time.Minute, []string{d.addr})
	if err != nil {
		t.Fatal(err)
	}
	ch := watch(t, s, nil)
	two := []Member{member("web-0", "10.0.0.1:7946"), member("web-1", "10.0.0.2:7946")}
	if got := nextSet(t, ch); !slices.Equal(got, two) {
		t.Fatalf("first set %v", got)
	}
	d.waitQuestions(t, srvName, dns.TypeSRV, 3)
	noSet(t, ch, "same answer")

	d.set(srvName, testRecords{srv: []string{"web-1.www.shardcache.test.:7946", "web-0.www.shardcache.test.:7946"}})
	d.waitQuestions(t, srvName, dns.TypeSRV, 3)
	noSet(t, ch, "same records, other order")

	d.set(srvName, testRecords{srv: []string{"web-2.www.shardcache.test.:7946", "web-1.www.shardcache.test.:7946", "web-0.www.shardcache.test.:7946"}})
	three := append(slices.Clone(two), member("web-2", "10.0.0.3:7946"))
	if got := nextSet(t, ch); !slices.Equal(got, three) {
		t.Fatalf("after adding web-2: %v", got)
	}
	d.waitQuestions(t, srvName, dns.TypeSRV, 3)
	noSet(t, ch, "no change after adding web-2")

	d.set("web-1.www.shardcache.test.", testRecords{ips: []string{"10.0.0.22"}})
	if got := nextSet(t, ch); got[1] != member("web-1", "10.0.0.22:7946") {
		t.Fatalf("after web-1 moved: %v", got)
	}
	d.waitQuestions(t, srvName, dns.TypeSRV, 3)
	noSet(t, ch, "no change after web-1 moved")

	// The A source too: another order of the same addresses is no change.
	d.set("www.shardcache.test.", testRecords{ips: []string{"10.0.0.2", "10.0.0.1"}})
	a, err := NewDNSSource("www.shardcache.test.", 7946, 20*time.Millisecond, time.Minute, []string{d.addr})
	if err != nil {
		t.Fatal(err)
	}
	ach := watch(t, a, nil)
	if got := nextSet(t, ach); !slices.Equal(got, []Member{member("", "10.0.0.1:7946"), member("", "10.0.0.2:7946")}) {
		t.Fatalf("A: first set %v", got)
	}
	d.set("www.shardcache.test.", testRecords{ips: []string{"10.0.0.1", "10.0.0.2"}})
	d.waitQuestions(t, "www.shardcache.test.", dns.TypeA, 3)
	noSet(t, ach, "A: same addresses, other order")
}

func logsWith(logs *observer.ObservedLogs, level zapcore.Level, msg string) []observer.LoggedEntry {
	return logs.Filter(func(e observer.LoggedEntry) bool {
		return e.Level == level && strings.Contains(e.Message, msg)
	}).All()
}

func waitLog(t *testing.T, logs *observer.ObservedLogs, level zapcore.Level, msg string) observer.LoggedEntry {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if es := logsWith(logs, level, msg); len(es) > 0 {
			return es[len(es)-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %v log %q", level, msg)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestSourceWatchFailures: failing lookups (SERVFAIL, no answer) never
// change the set: each logs a WARN with the error and how long lookups
// have been failing, and after grace one ERROR says the last good set is
// kept anyway. Before any good answer there is no set to report.
func TestSourceWatchFailures(t *testing.T) {
	d := startTestDNS(t)
	d.set("web-0.www.shardcache.test.", testRecords{ips: []string{"10.0.0.1"}})
	d.set(srvName, testRecords{srv: []string{"web-0.www.shardcache.test.:7946"}})
	d.setMode("servfail")
	core, logs := observer.New(zapcore.DebugLevel)
	s, err := NewSRVSource(srvName, 20*time.Millisecond, 200*time.Millisecond, []string{d.addr})
	if err != nil {
		t.Fatal(err)
	}
	s.timeout = 200 * time.Millisecond
	ch := watch(t, s, zap.New(core))

	// No good answer yet: warnings, no set.
	waitLog(t, logs, zapcore.WarnLevel, "peer lookup failed")
	noSet(t, ch, "failing from the start")
	d.setMode("")
	one := []Member{member("web-0", "10.0.0.1:7946")}
	if got := nextSet(t, ch); !slices.Equal(got, one) {
		t.Fatalf("first set %v", got)
	}
	if es := logsWith(logs, zapcore.ErrorLevel, ""); len(es) != 0 {
		t.Fatalf("an ERROR before grace: %v", es[0].Message)
	}

	logs.TakeAll()
	start := time.Now()
	d.setMode("servfail")
	w := waitLog(t, logs, zapcore.WarnLevel, "peer lookup failed; keeping the last good set")
	if f := w.ContextMap(); f["error"] == nil || f["failing_for"] == nil || f["members"] != int64(1) {
		t.Errorf("WARN fields %v", f)
	}
	e := waitLog(t, logs, zapcore.ErrorLevel, "keeping the last good set anyway")
	if time.Since(start) < 200*time.Millisecond {
		t.Errorf("ERROR after %v, before grace", time.Since(start))
	}
	if f := e.ContextMap(); f["failing_for"].(time.Duration) < 200*time.Millisecond {
		t.Errorf("ERROR fields %v", f)
	}
	// No answer at all (timeouts) fails the same way, and the ERROR is not
	// repeated.
	d.setMode("drop")
	d.waitQuestions(t, srvName, dns.TypeSRV, 4)
	w = waitLog(t, logs, zapcore.WarnLevel, "peer lookup failed")
	if err := w.ContextMap()["error"].(string); !strings.Contains(err, "timeout") {
		t.Errorf("a timeout logged as %q", err)
	}
	if n := len(logsWith(logs, zapcore.ErrorLevel, "")); n != 1 {
		t.Errorf("%d ERRORs, want 1", n)
	}
	noSet(t, ch, "failing lookups")

	// Answers again, the same set: no change, an INFO.
	d.setMode("")
	waitLog(t, logs, zapcore.InfoLevel, "answer again")
	d.waitQuestions(t, srvName, dns.TypeSRV, 2)
	noSet(t, ch, "the same set after failures")

	// A new run of failures logs its own ERROR after grace.
	d.setMode("servfail")
	deadline := time.Now().Add(5 * time.Second)
	for len(logsWith(logs, zapcore.ErrorLevel, "")) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no ERROR for the second run of failures")
		}
		time.Sleep(5 * time.Millisecond)
	}
	noSet(t, ch, "failing again")
}

// TestSourceWatchEmptyAnswer: an empty successful answer (NXDOMAIN or no
// records) replaces a non-empty set only once answers have been empty for
// grace; a shorter gap, or a flapping one, changes nothing. The first
// answer, when empty, is reported at once.
func TestSourceWatchEmptyAnswer(t *testing.T) {
	const grace = 500 * time.Millisecond
	d := startTestDNS(t)
	d.set("web-0.www.shardcache.test.", testRecords{ips: []string{"10.0.0.1"}})
	srvOne := testRecords{srv: []string{"web-0.www.shardcache.test.:7946"}}
	d.set(srvName, srvOne)
	core, logs := observer.New(zapcore.DebugLevel)
	s, err := NewSRVSource(srvName, 20*time.Millisecond, grace, []string{d.addr})
	if err != nil {
		t.Fatal(err)
	}
	ch := watch(t, s, zap.New(core))
	one := []Member{member("web-0", "10.0.0.1:7946")}
	if got := nextSet(t, ch); !slices.Equal(got, one) {
		t.Fatalf("first set %v", got)
	}

	// Empty for a few refreshes (NXDOMAIN, then no records), flapping:
	// no change.
	for _, empty := range []func(){func() { d.del(srvName) }, func() { d.set(srvName, testRecords{}) }} {
		start := time.Now()
		empty()
		d.waitQuestions(t, srvName, dns.TypeSRV, 3)
		d.set(srvName, srvOne)
		if time.Since(start) >= grace {
			t.Skip("the machine is too slow for this test's timing")
		}
		d.waitQuestions(t, srvName, dns.TypeSRV, 2)
		noSet(t, ch, "empty for less than grace")
	}
	waitLog(t, logs, zapcore.InfoLevel, "keeping the last set until the answer has been empty")

	// Empty for longer than grace: the source now has no members.
	start := time.Now()
	d.del(srvName)
	if got := nextSet(t, ch); len(got) != 0 {
		t.Fatalf("after grace: %v", got)
	}
	if since := time.Since(start); since < grace {
		t.Errorf("emptied after %v, before grace", since)
	}
	waitLog(t, logs, zapcore.WarnLevel, "the source now has none")
	d.waitQuestions(t, srvName, dns.TypeSRV, 2)
	noSet(t, ch, "still empty")
	// Back: reported at once.
	d.set(srvName, srvOne)
	if got := nextSet(t, ch); !slices.Equal(got, one) {
		t.Fatalf("back: %v", got)
	}

	// A source whose first answer is empty reports it at once.
	a, err := NewDNSSource("nobody.shardcache.test.", 7946, 20*time.Millisecond, time.Minute, []string{d.addr})
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if got := nextSet(t, watch(t, a, nil)); len(got) != 0 || time.Since(start) > 5*time.Second {
		t.Fatalf("first answer empty: %v", got)
	}
}

// TestSourceWatchNotesOnce: what an answer leaves out (a target that is
// no node name) is logged once, not at every refresh.
func TestSourceWatchNotesOnce(t *testing.T) {
	d := startTestDNS(t)
	d.set("web-0.www.shardcache.test.", testRecords{ips: []string{"10.0.0.1"}})
	d.set("web_1.www.shardcache.test.", testRecords{ips: []string{"10.0.0.2"}})
	d.set(srvName, testRecords{srv: []string{"web-0.www.shardcache.test.:7946", "web_1.www.shardcache.test.:7946"}})
	core, logs := observer.New(zapcore.DebugLevel)
	s, err := NewSRVSource(srvName, 20*time.Millisecond, time.Minute, []string{d.addr})
	if err != nil {
		t.Fatal(err)
	}
	ch := watch(t, s, zap.New(core))
	if got := nextSet(t, ch); !slices.Equal(got, []Member{member("web-0", "10.0.0.1:7946")}) {
		t.Fatalf("set %v", got)
	}
	d.waitQuestions(t, srvName, dns.TypeSRV, 4)
	if n := len(logsWith(logs, zapcore.WarnLevel, "web_1")); n != 1 {
		t.Errorf("the skipped target logged %d times, want 1", n)
	}
}

// TestSourceMergeMembers: static members and the sources' sets become one
// sorted list; a name found with another address keeps the static one
// (then the first source's); nameless members follow, by address, and
// are dropped when a named member has their address. Merger logs each
// conflict once while it lasts.
func TestSourceMergeMembers(t *testing.T) {
	static := []Member{member("n2", "10.0.0.2:7946"), member("n1", "10.0.0.1:7946")}
	srv := []Member{member("n3", "10.0.0.3:7946"), member("n2", "10.9.9.9:7946"), member("n1", "10.0.0.1:7946")}
	other := []Member{
		member("n3", "10.0.0.33:7946"),
		member("", "10.0.0.10:7946"), member("", "10.0.0.9:7946"), member("", "10.0.0.9:7946"),
		member("", "10.0.0.1:7946"), // n1
	}
	want := []Member{
		member("n1", "10.0.0.1:7946"), member("n2", "10.0.0.2:7946"), member("n3", "10.0.0.3:7946"),
		member("", "10.0.0.9:7946"), member("", "10.0.0.10:7946"),
	}
	if got := MergeMembers(static, srv, other); !slices.Equal(got, want) {
		t.Errorf("merged\n got %v\nwant %v", got, want)
	}
	if got := MergeMembers(nil); len(got) != 0 {
		t.Errorf("nothing merged: %v", got)
	}
	in := slices.Clone(srv)
	MergeMembers(nil, in)
	if !slices.Equal(in, srv) {
		t.Errorf("MergeMembers changed its input: %v", in)
	}

	core, logs := observer.New(zapcore.DebugLevel)
	m := NewMerger(zap.New(core))
	conflicts := func() []string {
		var out []string
		for _, e := range logs.TakeAll() {
			f := e.ContextMap()
			out = append(out, fmt.Sprintf("%s kept %s dropped %s", f["name"], f["kept"], f["dropped"]))
		}
		slices.Sort(out)
		return out
	}
	if got := m.Merge(static, srv, other); !slices.Equal(got, want) {
		t.Errorf("Merger: %v", got)
	}
	wantLogs := []string{"n2 kept 10.0.0.2:7946 dropped 10.9.9.9:7946", "n3 kept 10.0.0.3:7946 dropped 10.0.0.33:7946"}
	if got := conflicts(); !slices.Equal(got, wantLogs) {
		t.Errorf("conflicts logged: %q", got)
	}
	m.Merge(static, srv, other)
	if got := conflicts(); len(got) != 0 {
		t.Errorf("conflicts logged again: %q", got)
	}
	m.Merge(static, srv[:1], other) // n2's conflict is gone
	m.Merge(static, srv, other)
	if got := conflicts(); !slices.Equal(got, wantLogs[:1]) {
		t.Errorf("a conflict back: %q", got)
	}
}
