package cluster

import (
	"context"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/shardcache/caddy-shardcache/peering"
)

// Measurements of the table of content at scale. Each runs small by
// default and at full size with an environment variable (see README,
// "Scale"):
//
//	SHARDCACHE_TOC_ITEMS=1000000 go test -run 'TestMeasureTOCHeap|TestSnapshotStreamsInBoundedMemory' -v ./cluster/
//	SHARDCACHE_SIM_PATHS=10000000 go test -run TestSimulateFiftyMembers -v -timeout 20m ./cluster/

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return n
	}
	return def
}

// heapAfterGC is the live heap.
func heapAfterGC() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestMeasureTOCHeap learns the tables of content of n files another node
// holds and reports the heap they take per file. (Before the compact
// table the same measurement, then TestMeasureBefore, gave 439.5 B per
// file at 1M files.)
func TestMeasureTOCHeap(t *testing.T) {
	n := envInt(t, "SHARDCACHE_TOC_ITEMS", 20_000)
	m := NewMembership("n1", false, []peering.Peer{{Name: "n2", Addr: "x"}}, 1)
	c := New(Config{Name: "n1"}, m)
	g := c.Group("www")
	before := heapAfterGC()
	var ms []peering.Meta
	for i, learned := 0, 0; learned < n; i++ {
		meta := genMeta(i)
		if m.Owner(meta.Path) != "n2" {
			continue
		}
		ms = append(ms, meta)
		if learned++; len(ms) == 10_000 || learned == n {
			g.Learn("n2", peering.Delta{Group: "www", Upserts: ms})
			ms = ms[:0]
		}
	}
	ms = nil
	after := heapAfterGC()
	per := float64(after-before) / float64(n)
	t.Logf("%d entries: %.1f B per non-owned file (heap), table %.1f B per entry", g.TOCLen(), per,
		float64(g.TOCBytes())/float64(g.TOCLen()))
	if per > 64 {
		t.Errorf("%.1f B per non-owned file; want at most 64", per)
	}
	runtime.KeepAlive(g)
}

// genBackend is a peering backend that lists n generated files of group
// www held by owner under m (nothing on disk).
type genBackend struct {
	n     int
	owner string
	m     *Membership
}

func (b genBackend) Get(context.Context, peering.Request) (peering.Meta, []byte, error) {
	return peering.Meta{}, nil, peering.ErrNotFound
}
func (b genBackend) Ready() bool { return true }
func (b genBackend) TOC(w *peering.TOCWriter) error {
	want, err := w.Group("www", b.n, true)
	if err != nil || !want {
		return err
	}
	for i, listed := 0, 0; listed < b.n; i++ {
		meta := genMeta(i)
		if b.m.Owner(meta.Path) != b.owner {
			continue
		}
		listed++
		if err := w.Item(&meta); err != nil {
			return err
		}
	}
	return nil
}

// A node connecting to a peer that holds n files gets its snapshot
// streamed in bounded frames and applied frame by frame: the memory it
// takes beyond the table it builds stays bounded, sender and receiver
// together (both in this process). Live memory is sampled after a forced
// collection every 20 ms while the snapshot streams.
func TestSnapshotStreamsInBoundedMemory(t *testing.T) {
	n := envInt(t, "SHARDCACHE_TOC_ITEMS", 50_000)
	pc1, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc2, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMembership("n1", false, []peering.Peer{{Name: "n2", Addr: pc2.LocalAddr().String()}}, 1)
	c := New(Config{Name: "n1", Peering: func(pc *peering.Config) { pc.PacketConn = pc1 }}, m)
	defer c.Close()
	creds1, _ := peering.CredentialsFromSecret(testSecret, "n1")
	creds2, _ := peering.CredentialsFromSecret(testSecret, "n2")
	// n2 is a bare peering node serving generated metadata; n1 a Cluster.
	base := heapAfterGC()
	sender, err := peering.Listen(peering.Config{Name: "n2", PacketConn: pc2, TLS: creds2,
		Backend: genBackend{n: n, owner: "n2", m: m}, State: peering.State{Epoch: m.Epoch(),
			Groups: []peering.GroupState{{Name: "www", Ready: true}}}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if h := heapAfterGC(); h > peak.Load() {
				peak.Store(h)
			}
		}
	}()
	start := time.Now()
	if err := c.Start(creds1, ""); err != nil {
		t.Fatal(err)
	}
	g := c.Group("www")
	deadline := time.Now().Add(10 * time.Minute)
	for g.TOCLen() < n || !c.trusted("n2", "www", m) {
		if time.Now().After(deadline) {
			t.Fatalf("snapshot incomplete: %d of %d entries", g.TOCLen(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(start)
	close(stop)
	<-done
	final := heapAfterGC()
	extra := int64(peak.Load()) - int64(final)
	t.Logf("%d items: snapshot %.1f MB on the wire in %v; table %.1f MB (%.1f B/entry); live heap %.1f MB before, %.1f MB after, peak %.1f MB: %.1f MiB beyond the final heap",
		n, float64(sender.TOCBytesSent())/1e6, took.Round(time.Millisecond), float64(g.TOCBytes())/1e6,
		float64(g.TOCBytes())/float64(g.TOCLen()), float64(base)/1e6, float64(final)/1e6, float64(peak.Load())/1e6,
		float64(extra)/(1<<20))
	if extra > 32<<20 {
		t.Errorf("peak live memory %d MiB beyond the final heap; want at most 32", extra>>20)
	}
}
