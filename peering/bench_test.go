package peering

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang/groupcache"
	pb "github.com/golang/groupcache/groupcachepb"
	"github.com/golang/protobuf/proto"
	"github.com/quic-go/quic-go"
)

// The transfer benchmarks move the same bodies four ways, on loopback:
//
//	node      Node.Fetch: our protocol on a long-lived mutual-TLS QUIC connection
//	bare      a bare quic-go stream with the same TLS and quic.Config: the
//	          key out, the body back, nothing else (the floor for "node")
//	httppool  groupcache's HTTPPool server, and its httpGetter's client code
//	          with http.DefaultTransport, as groupcache ships
//	httppool-tuned  the same with an http.Transport that keeps 64 idle
//	          connections per host instead of 2
//	memcopy   an in-process copy into a fresh slice (what a local hit costs)
//
// each serially and with 32 goroutines. Run:
//
//	go test -run='^$' -bench=Transfer -benchmem ./peering/

var benchSizes = []struct {
	name string
	size int
}{{"1KiB", 1 << 10}, {"64KiB", 64 << 10}, {"1MiB", 1 << 20}}

const benchGroup = "bench"

type benchFixture struct {
	bodies map[string][]byte // key → body

	client *Node // fetches from "server"

	bareConn *quic.Conn

	httpURL string // groupcache base URL, with trailing slash
	tuned   http.RoundTripper
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
func (b benchBackend) Snapshot() []GroupTOC { return nil }
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
	str, err := f.bareConn.OpenStreamSync(context.Background())
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

func BenchmarkTransfer(b *testing.B) {
	f := getFixture(b)
	for _, s := range benchSizes {
		want := f.bodies[s.name]
		impls := []struct {
			name  string
			fetch func() ([]byte, error)
		}{
			{"node", func() ([]byte, error) { return f.fetchNode(s.name) }},
			{"bare", func() ([]byte, error) { return f.fetchBare(s.name, s.size) }},
			{"httppool", func() ([]byte, error) { return f.fetchHTTP(http.DefaultTransport, s.name) }},
			{"httppool-tuned", func() ([]byte, error) { return f.fetchHTTP(f.tuned, s.name) }},
			{"memcopy", func() ([]byte, error) { return bytes.Clone(want), nil }},
		}
		for _, im := range impls {
			// Check once, outside the timing.
			got, err := im.fetch()
			if err != nil || !bytes.Equal(got, want) {
				b.Fatalf("%s %s: %d bytes, %v", im.name, s.name, len(got), err)
			}
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
func BenchmarkTransferPaired(b *testing.B) {
	f := getFixture(b)
	const rounds = 15
	const slice = 80 * time.Millisecond
	for _, s := range benchSizes {
		impls := []struct {
			name  string
			fetch func() ([]byte, error)
		}{
			{"node", func() ([]byte, error) { return f.fetchNode(s.name) }},
			{"bare", func() ([]byte, error) { return f.fetchBare(s.name, s.size) }},
			{"httppool", func() ([]byte, error) { return f.fetchHTTP(http.DefaultTransport, s.name) }},
			{"tuned", func() ([]byte, error) { return f.fetchHTTP(f.tuned, s.name) }},
			{"memcopy", func() ([]byte, error) { return bytes.Clone(f.bodies[s.name]), nil }},
		}
		for _, conc := range []int{1, 32} {
			mode := "serial"
			if conc > 1 {
				mode = fmt.Sprintf("par%d", conc)
			}
			b.Run(s.name+"/"+mode, func(b *testing.B) {
				// run does ops fetches on conc goroutines and returns
				// wall and CPU ns/op.
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
								if _, err := fetch(); err != nil {
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
				ops := make([]int, len(impls))
				for i, im := range impls { // calibrate to about one slice
					ns, _ := run(im.fetch, 4*conc)
					ops[i] = max(4*conc, int(float64(slice)/ns))
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
				}
				median := func(v []float64) float64 {
					v = slices.Clone(v)
					slices.Sort(v)
					return v[len(v)/2]
				}
				wall, cpu := map[string]float64{}, map[string]float64{}
				for i, im := range impls {
					wall[im.name], cpu[im.name] = median(walls[i]), median(cpus[i])
					b.ReportMetric(wall[im.name], im.name+"-ns/op")
					b.ReportMetric(cpu[im.name], im.name+"-cpu-ns/op")
				}
				b.ReportMetric(wall["node"]/wall["bare"], "node/bare")
				b.ReportMetric(cpu["node"]/cpu["bare"], "node/bare-cpu")
				b.ReportMetric(wall["httppool"]/wall["node"], "httppool/node")
				b.ReportMetric(cpu["httppool"]/cpu["node"], "httppool/node-cpu")
				b.ReportMetric(wall["tuned"]/wall["node"], "tuned/node")
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
