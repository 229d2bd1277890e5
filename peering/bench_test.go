package peering

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang/groupcache"
	pb "github.com/golang/groupcache/groupcachepb"
	"github.com/golang/protobuf/proto"
	"github.com/quic-go/quic-go"
)

// The transfer benchmarks move the same bodies, held in memory by every
// server, these ways on loopback:
//
//	node      Node.Fetch: our protocol on a long-lived mutual-TLS QUIC connection
//	bare      a bare quic-go stream with the same TLS and quic.Config: the
//	          key out, the body back, nothing else (the floor for "node")
//	httppool  groupcache's HTTPPool server, and its httpGetter's client code
//	          with http.DefaultTransport, as groupcache ships
//	tuned     the same with an http.Transport that keeps 64 idle
//	          connections per host instead of 2
//	h2        HTTP/2 over TLS 1.3 over TCP: net/http's server and one shared
//	          client, mutual TLS with the same credentials as the nodes
//	h1tls     HTTP/1.1 over the same TLS and server (h2 disabled in the
//	          client), 64 idle connections per host
//	memcopy   an in-process copy into a fresh slice (what a local hit costs)
//
// each serially and with 32 goroutines. Every implementation's bodies are
// checked byte for byte before it is timed. Run:
//
//	go test -run='^$' -bench=Transfer -benchmem ./peering/

var benchSizes = []struct {
	name string
	size int
}{{"1KiB", 1 << 10}, {"64KiB", 64 << 10}, {"1MiB", 1 << 20}, {"4MiB", 4 << 20}}

const benchGroup = "bench"

type benchFixture struct {
	bodies map[string][]byte // key → body

	client *Node // fetches from "server"

	bareConn *quic.Conn

	httpURL string // groupcache base URL, with trailing slash
	tuned   http.RoundTripper

	httpsURL string            // net/http TLS server base URL, with trailing slash
	h2       http.RoundTripper // HTTP/2 only
	h1tls    http.RoundTripper // HTTP/1.1 only
}

var (
	fixtureOnce sync.Once
	fixture     *benchFixture
	fixtureErr  error
)

func getFixture(b *testing.B) *benchFixture {
	fixtureOnce.Do(func() { fixture, fixtureErr = newBenchFixture(b) })
	if fixtureErr != nil {
		b.Fatal(fixtureErr)
	}
	return fixture
}

// newBenchFixture starts everything once per process: groupcache's
// registries are process-global and panic on a second HTTPPool.
func newBenchFixture(b *testing.B) (*benchFixture, error) {
	f := &benchFixture{bodies: map[string][]byte{}}
	backend := benchBackend{}
	for _, s := range benchSizes {
		f.bodies[s.name] = body(s.size, byte(s.size))
		backend[s.name] = memItem{Meta{Path: s.name, Version: "v1", ContentType: "application/octet-stream", ETag: `"v1"`, Size: int64(s.size)}, f.bodies[s.name]}
	}

	// Our protocol: two nodes.
	pcS, pcC := bindLoopback(b), bindLoopback(b)
	peers := []Peer{{"server", pcS.LocalAddr().String()}, {"client", pcC.LocalAddr().String()}}
	server, err := Listen(Config{Name: "server", PacketConn: pcS, Peers: peers, TLS: credsFor(b, testSecret, "server"), Backend: backend})
	if err != nil {
		return nil, err
	}
	_ = server // lives for the process
	f.client, err = Listen(Config{Name: "client", PacketConn: pcC, Peers: peers, TLS: credsFor(b, testSecret, "client"), Backend: newMemBackend()})
	if err != nil {
		return nil, err
	}
	for !f.client.Peers()[0].Up {
		runtime.Gosched()
	}

	// Bare quic-go: same TLS, same quic.Config.
	tr := &quic.Transport{Conn: bindLoopback(b)}
	ln, err := tr.Listen(credsFor(b, testSecret, "bare").ServerConfig(), quicConfig(DefaultIdleTimeout))
	if err != nil {
		return nil, err
	}
	go serveBare(ln, f.bodies)
	ctr := &quic.Transport{Conn: bindLoopback(b)}
	qc := quicConfig(DefaultIdleTimeout)
	qc.MaxIncomingStreams = -1
	f.bareConn, err = ctr.Dial(context.Background(), ln.Addr(), credsFor(b, testSecret, "client").ClientConfig("bare"), qc)
	if err != nil {
		return nil, err
	}

	// groupcache's HTTPPool, serving from its main cache after the first
	// load of each key. The pool's only peer is itself, so it never
	// forwards.
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	self := "http://" + hl.Addr().String()
	pool := groupcache.NewHTTPPoolOpts(self, nil)
	pool.Set(self)
	groupcache.NewGroup(benchGroup, 64<<20, groupcache.GetterFunc(func(_ context.Context, key string, dest groupcache.Sink) error {
		body, ok := f.bodies[key]
		if !ok {
			return errors.New("no such key")
		}
		return dest.SetBytes(body)
	}))
	go http.Serve(hl, pool)
	f.httpURL = self + "/_groupcache/"
	f.tuned = &http.Transport{MaxIdleConns: 128, MaxIdleConnsPerHost: 64}

	// net/http over TLS over TCP, HTTP/2 or HTTP/1.1 as the client
	// chooses: the nodes' mutual TLS 1.3 (same CA, Ed25519 leaves), with
	// the HTTP ALPN names instead of ours.
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	scfg := credsFor(b, testSecret, "https").ServerConfig()
	scfg.NextProtos = []string{"h2", "http/1.1"}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, ok := f.bodies[strings.TrimPrefix(r.URL.Path, "/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h["Content-Type"] = []string{"application/octet-stream"}
		h["Content-Length"] = []string{strconv.Itoa(len(body))}
		w.Write(body)
	}), TLSConfig: scfg, ErrorLog: log.New(io.Discard, "", 0)}
	go hs.ServeTLS(tl, "", "")
	f.httpsURL = "https://" + tl.Addr().String() + "/"
	ccfg := credsFor(b, testSecret, "client").ClientConfig("https")
	ccfg.NextProtos = nil // the transports set h2 / http/1.1
	f.h2 = &http.Transport{TLSClientConfig: ccfg.Clone(), ForceAttemptHTTP2: true}
	ccfg.NextProtos = []string{"http/1.1"}
	f.h1tls = &http.Transport{
		TLSClientConfig: ccfg,
		// A non-nil empty map disables HTTP/2.
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConns:        128,
		MaxIdleConnsPerHost: 64,
	}
	return f, nil
}

// benchBackend serves a fixed set of items from a read-only map, as the
// bare server does: no locks, no counters.
type benchBackend map[string]memItem

func (b benchBackend) Get(_ context.Context, req Request) (Meta, []byte, error) {
	it, ok := b[req.Path]
	if !ok || req.Group != benchGroup {
		return Meta{}, nil, ErrNotFound
	}
	return it.meta, it.body, nil
}
func (b benchBackend) TOC(*TOCWriter) error { return nil }
func (b benchBackend) Ready() bool          { return true }

// serveBare answers each stream with the body named by the key it carries.
func serveBare(ln *quic.Listener, bodies map[string][]byte) {
	for {
		conn, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		go func() {
			for {
				str, err := conn.AcceptStream(context.Background())
				if err != nil {
					return
				}
				go func() {
					var key [16]byte
					n, err := io.ReadFull(str, key[:])
					if err != io.ErrUnexpectedEOF && err != io.EOF {
						str.CancelWrite(1)
						return
					}
					str.Write(bodies[string(key[:n])])
					str.Close()
				}()
			}
		}()
	}
}

func (f *benchFixture) fetchNode(key string) ([]byte, error) {
	_, b, err := f.client.Fetch(context.Background(), "server", Request{Group: benchGroup, Path: key})
	return b, err
}

func (f *benchFixture) fetchBare(key string, size int) ([]byte, error) {
	return fetchBare(f.bareConn, key, size)
}

// fetchBare sends key on a new stream of conn and reads a body of size
// bytes, then the stream's end.
func fetchBare(conn *quic.Conn, key string, size int) ([]byte, error) {
	str, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(str, key); err != nil {
		return nil, err
	}
	str.Close()
	b := make([]byte, size)
	if _, err := io.ReadFull(str, b); err != nil {
		return nil, err
	}
	var one [1]byte
	if _, err := str.Read(one[:]); err != io.EOF {
		return nil, fmt.Errorf("no EOF: %v", err)
	}
	return b, nil
}

var gcBufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// fetchHTTP is groupcache's httpGetter.Get, line for line.
func (f *benchFixture) fetchHTTP(tr http.RoundTripper, key string) ([]byte, error) {
	in := &pb.GetRequest{Group: proto.String(benchGroup), Key: proto.String(key)}
	out := &pb.GetResponse{}
	u := fmt.Sprintf("%v%v/%v", f.httpURL, url.QueryEscape(in.GetGroup()), url.QueryEscape(in.GetKey()))
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		return nil, err
	}
	req = req.WithContext(context.Background())
	res, err := tr.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("server returned: %v", res.Status)
	}
	b := gcBufPool.Get().(*bytes.Buffer)
	b.Reset()
	defer gcBufPool.Put(b)
	if _, err := io.Copy(b, res.Body); err != nil {
		return nil, err
	}
	if err := proto.Unmarshal(b.Bytes(), out); err != nil {
		return nil, err
	}
	return out.Value, nil
}

// fetchHTTPS is a plain GET of the key from the net/http TLS server
// through tr, which must speak HTTP/major, into a slice of the announced
// length.
func (f *benchFixture) fetchHTTPS(tr http.RoundTripper, major int, key string) ([]byte, error) {
	req, err := http.NewRequest("GET", f.httpsURL+key, nil)
	if err != nil {
		return nil, err
	}
	res, err := tr.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("server returned: %v", res.Status)
	}
	if res.ProtoMajor != major {
		return nil, fmt.Errorf("got %s, want HTTP/%d", res.Proto, major)
	}
	if res.ContentLength < 0 || res.ContentLength > 64<<20 {
		return nil, fmt.Errorf("content length %d", res.ContentLength)
	}
	b := make([]byte, res.ContentLength)
	if _, err := io.ReadFull(res.Body, b); err != nil {
		return nil, err
	}
	var one [1]byte
	if _, err := res.Body.Read(one[:]); err != io.EOF {
		return nil, fmt.Errorf("no EOF: %v", err)
	}
	return b, nil
}

// benchImpl is one way to fetch one body.
type benchImpl struct {
	name  string
	fetch func() ([]byte, error)
}

// impls are the implementations compared, fetching the body named name.
func (f *benchFixture) impls(name string, size int) []benchImpl {
	return []benchImpl{
		{"node", func() ([]byte, error) { return f.fetchNode(name) }},
		{"bare", func() ([]byte, error) { return f.fetchBare(name, size) }},
		{"httppool", func() ([]byte, error) { return f.fetchHTTP(http.DefaultTransport, name) }},
		{"tuned", func() ([]byte, error) { return f.fetchHTTP(f.tuned, name) }},
		{"h2", func() ([]byte, error) { return f.fetchHTTPS(f.h2, 2, name) }},
		{"h1tls", func() ([]byte, error) { return f.fetchHTTPS(f.h1tls, 1, name) }},
		{"memcopy", func() ([]byte, error) { return bytes.Clone(f.bodies[name]), nil }},
	}
}

// checkImpls fetches want with every implementation from conc goroutines
// at once, twice each, and fails b unless every body is want, byte for
// byte. It runs outside the timing: the timed loops check lengths only.
func checkImpls(b *testing.B, impls []benchImpl, want []byte, conc int) {
	b.Helper()
	for _, im := range impls {
		var wg sync.WaitGroup
		errs := make([]error, conc)
		for w := range conc {
			wg.Go(func() {
				for range 2 {
					got, err := im.fetch()
					if err == nil && !bytes.Equal(got, want) {
						err = fmt.Errorf("body differs from the expected one (%d bytes, want %d)", len(got), len(want))
					}
					if err != nil {
						errs[w] = err
						return
					}
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			b.Fatalf("%s: %v", im.name, err)
		}
	}
}

func BenchmarkTransfer(b *testing.B) {
	f := getFixture(b)
	for _, s := range benchSizes {
		impls := f.impls(s.name, s.size)
		checkImpls(b, impls, f.bodies[s.name], 1)
		for _, im := range impls {
			b.Run(fmt.Sprintf("%s/serial/%s", s.name, im.name), func(b *testing.B) {
				b.SetBytes(int64(s.size))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := im.fetch(); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(fmt.Sprintf("%s/par32/%s", s.name, im.name), func(b *testing.B) {
				b.SetBytes(int64(s.size))
				b.ReportAllocs()
				b.SetParallelism((32 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := im.fetch(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

// BenchmarkTransferPaired measures the same implementations as
// BenchmarkTransfer, but interleaved: in each of several rounds every
// implementation runs for a short slice, so load from other processes on
// the machine hits them alike. It reports, per implementation, the median
// wall-clock ns/op and the median CPU ns/op of this process (client and
// server both live here, so CPU time is the whole cost of a transfer and is
// little disturbed by other processes), and the ratios the design targets:
//
//	go test -run='^$' -bench=TransferPaired -benchtime=1x ./peering/
//
// It takes about a minute on two CPUs.
func BenchmarkTransferPaired(b *testing.B) {
	f := getFixture(b)
	for _, s := range benchSizes {
		impls := f.impls(s.name, s.size)
		for _, conc := range []int{1, 32} {
			b.Run(s.name+"/"+benchMode(conc), func(b *testing.B) {
				checkImpls(b, impls, f.bodies[s.name], conc)
				wall, cpu := runPaired(b, impls, s.size, conc)
				b.ReportMetric(wall["node"]/wall["bare"], "node/bare")
				b.ReportMetric(cpu["node"]/cpu["bare"], "node/bare-cpu")
				for _, other := range []string{"httppool", "h2", "h1tls"} {
					b.ReportMetric(wall[other]/wall["node"], other+"/node")
					b.ReportMetric(cpu[other]/cpu["node"], other+"/node-cpu")
				}
				b.ReportMetric(wall["tuned"]/wall["node"], "tuned/node")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

func benchMode(conc int) string {
	if conc > 1 {
		return fmt.Sprintf("par%d", conc)
	}
	return "serial"
}

// runPaired runs impls interleaved (see BenchmarkTransferPaired), each
// fetching a body of size bytes on conc goroutines, reports every
// implementation's median wall and CPU ns/op as metrics and returns them
// by name. The timed loops check only the length of each body.
func runPaired(b *testing.B, impls []benchImpl, size, conc int) (wall, cpu map[string]float64) {
	const rounds = 11
	const slice = 60 * time.Millisecond
	// run does ops fetches on conc goroutines and returns wall and CPU
	// ns/op.
	run := func(fetch func() ([]byte, error), ops int) (wall, cpu float64) {
		c0 := cpuTime()
		start := time.Now()
		var wg sync.WaitGroup
		for w := range conc {
			n := ops / conc
			if w < ops%conc {
				n++
			}
			wg.Go(func() {
				for range n {
					got, err := fetch()
					if err == nil && len(got) != size {
						err = fmt.Errorf("%d bytes, want %d", len(got), size)
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		wall = float64(time.Since(start).Nanoseconds()) / float64(ops)
		cpu = float64(cpuTime()-c0) / float64(ops)
		return wall, cpu
	}
	// At least one fetch per goroutine per slice; four for small bodies.
	minOps := 4 * conc
	if size >= 1<<20 {
		minOps = conc
	}
	ops := make([]int, len(impls))
	for i, im := range impls { // calibrate to about one slice
		ns, _ := run(im.fetch, minOps)
		ops[i] = max(minOps, int(float64(slice)/ns))
	}
	walls := make([][]float64, len(impls))
	cpus := make([][]float64, len(impls))
	for r := range rounds {
		for k := range impls {
			i := (k + r) % len(impls) // rotate who goes first
			w, c := run(impls[i].fetch, ops[i])
			walls[i] = append(walls[i], w)
			cpus[i] = append(cpus[i], c)
		}
		if b.Failed() {
			b.FailNow()
		}
	}
	median := func(v []float64) float64 {
		v = slices.Clone(v)
		slices.Sort(v)
		return v[len(v)/2]
	}
	wall, cpu = map[string]float64{}, map[string]float64{}
	for i, im := range impls {
		wall[im.name], cpu[im.name] = median(walls[i]), median(cpus[i])
		b.ReportMetric(wall[im.name], im.name+"-ns/op")
		b.ReportMetric(cpu[im.name], im.name+"-cpu-ns/op")
	}
	return wall, cpu
}

// BenchmarkQUICWindows is an experiment on bare quic-go streams (as
// "bare" above): the same 1 MiB and 4 MiB transfers, paired, over one
// connection per variant of the nodes' quic.Config, to see which
// flow-control windows and packet settings move large bodies fastest:
//
//	go test -run='^$' -bench=QUICWindows -benchtime=1x ./peering/
//
// The ratios are variant/node, wall and CPU: under 1 is faster than the
// nodes' configuration.
func BenchmarkQUICWindows(b *testing.B) {
	f := getFixture(b) // for the bodies
	variants := []struct {
		name string
		tune func(*quic.Config)
	}{
		{"node", func(*quic.Config) {}},
		{"qgodefault", func(c *quic.Config) { // quic-go's own windows
			c.InitialStreamReceiveWindow, c.MaxStreamReceiveWindow = 0, 0
			c.InitialConnectionReceiveWindow, c.MaxConnectionReceiveWindow = 0, 0
		}},
		{"s1m", func(c *quic.Config) { // 1 MiB stream window, auto-tuned to 16
			c.InitialStreamReceiveWindow = 1 << 20
		}},
		{"s16m", func(c *quic.Config) { // 16 MiB stream / 128 MiB connection
			c.InitialStreamReceiveWindow, c.MaxStreamReceiveWindow = 16<<20, 64<<20
			c.InitialConnectionReceiveWindow, c.MaxConnectionReceiveWindow = 128<<20, 512<<20
		}},
		{"c256m", func(c *quic.Config) { // only the connection window raised
			c.InitialConnectionReceiveWindow, c.MaxConnectionReceiveWindow = 256<<20, 1<<30
		}},
		{"nopmtud", func(c *quic.Config) { // 1280-byte packets
			c.DisablePathMTUDiscovery = true
		}},
	}
	conns := make([]*quic.Conn, len(variants))
	for i, v := range variants {
		sc := quicConfig(DefaultIdleTimeout)
		v.tune(sc)
		str := &quic.Transport{Conn: bindLoopback(b)}
		b.Cleanup(func() { str.Close() })
		ln, err := str.Listen(credsFor(b, testSecret, "bare").ServerConfig(), sc)
		if err != nil {
			b.Fatal(err)
		}
		go serveBare(ln, f.bodies)
		cc := quicConfig(DefaultIdleTimeout)
		v.tune(cc)
		cc.MaxIncomingStreams = -1
		ctr := &quic.Transport{Conn: bindLoopback(b)}
		b.Cleanup(func() { ctr.Close() })
		conns[i], err = ctr.Dial(context.Background(), ln.Addr(), credsFor(b, testSecret, "client").ClientConfig("bare"), cc)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("quic-go GSO in use: %v", conns[0].ConnectionState().GSO)
	for _, s := range benchSizes {
		if s.size < 1<<20 {
			continue
		}
		impls := make([]benchImpl, len(variants))
		for i, v := range variants {
			impls[i] = benchImpl{v.name, func() ([]byte, error) { return fetchBare(conns[i], s.name, s.size) }}
		}
		for _, conc := range []int{1, 32} {
			b.Run(s.name+"/"+benchMode(conc), func(b *testing.B) {
				checkImpls(b, impls, f.bodies[s.name], conc)
				wall, cpu := runPaired(b, impls, s.size, conc)
				for _, v := range variants[1:] {
					b.ReportMetric(wall[v.name]/wall["node"], v.name+"/node")
					b.ReportMetric(cpu[v.name]/cpu["node"], v.name+"/node-cpu")
				}
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

// cpuTime is the CPU time (user + system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
