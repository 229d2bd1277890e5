package integration

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shardcache/caddy-shardcache/peering"
)

// chunkSize is shard.ChunkSize, the unit large items are held and moved in.
const chunkSize = 4 << 20

// TestClusterLargeChunked: a file of a little over three chunks in a
// three-node cluster. Every node serves it byte for byte, whole and in
// ranges; a Range request on a non-owner moves only the chunks its ranges
// touch (counted by the owner, which knows what it sent); popular chunks
// become hot on the non-owner; with the owner gone, the chunks come from the
// non-owner's own storage.
func TestClusterLargeChunked(t *testing.T) {
	needCaddy(t)
	const size = 3*chunkSize + 12345
	site := genClusterSite(20, 6)
	site["big.bin"] = clusterContent(rand.New(rand.NewPCG(6, 7)), "big.bin", size)
	want := site["big.bin"]
	members := clusterMembers(3)
	roots := writeClusterRoots(t, members, site)
	cfgs := clusterConfigs(t, members, roots)
	for i := range cfgs {
		cfgs[i].hot = "32MiB"
	}
	secret := newClusterSecret(t)
	nodes := startClusterNodes(t, secret, cfgs)
	if !waitClusterReady(t, nodes, site.paths(), len(site)) {
		return
	}
	var owner *clusterNode
	var others []*clusterNode
	ownerName := nodes[0].mustWhere(t, "/big.bin").Owner
	for _, n := range nodes {
		if n.name == ownerName {
			owner = n
		} else {
			others = append(others, n)
		}
	}
	if owner == nil || len(others) != 2 {
		t.Fatalf("owner %q of /big.bin is not one of the nodes", ownerName)
	}
	if w := owner.mustWhere(t, "/big.bin"); !w.Local || !w.Resident || w.Size != size {
		t.Fatalf("owner's where: %+v; want local, resident, %d bytes", w, size)
	}
	a, b := others[0], others[1]

	// served is what the owner has sent its peers: fetches and bytes.
	served := func() (int64, int64) {
		g := owner.status(t).group()
		return g.ServedPeers, g.ServedBytes
	}
	// moved runs f and returns the fetches and bytes the owner served
	// meanwhile.
	moved := func(f func()) (int64, int64) {
		n0, b0 := served()
		f()
		// Prefetches run beside the response: let any stragglers land.
		time.Sleep(100 * time.Millisecond)
		n1, b1 := served()
		return n1 - n0, b1 - b0
	}
	checkRange := func(n *clusterNode, rng string, lo, hi int64) {
		t.Helper()
		r := mustDo(t, http.MethodGet, n.base, "/big.bin", "Range: bytes="+rng)
		if r.status != http.StatusPartialContent || !bytes.Equal(r.body, want[lo:hi]) {
			t.Fatalf("%s: Range %s: %d, %d bytes; want 206 and bytes %d-%d", n.name, rng, r.status, len(r.body), lo, hi-1)
		}
		if cr, wcr := r.header.Get("Content-Range"), fmt.Sprintf("bytes %d-%d/%d", lo, hi-1, size); cr != wcr {
			t.Fatalf("%s: Range %s: Content-Range %q; want %q", n.name, rng, cr, wcr)
		}
	}

	t.Run("owner_serves_from_chunks", func(t *testing.T) {
		r := mustDo(t, http.MethodGet, owner.base, "/big.bin")
		if r.status != 200 || !bytes.Equal(r.body, want) || r.header.Get("Content-Length") != fmt.Sprint(size) {
			t.Fatalf("owner GET: %d, %d bytes, Content-Length %q", r.status, len(r.body), r.header.Get("Content-Length"))
		}
		// A range across the first chunk boundary.
		checkRange(owner, fmt.Sprintf("%d-%d", chunkSize-10, chunkSize+9), chunkSize-10, chunkSize+10)
		if g := owner.status(t).group(); g.tier("local").Requests < 2 || g.tier("storage").Requests != 0 {
			t.Errorf("owner tiers %+v; want local hits and no storage reads", g.Tiers)
		}
	})

	t.Run("range_moves_only_needed_chunks", func(t *testing.T) {
		// 1000 bytes inside chunk 2: one chunk moves.
		n, by := moved(func() {
			checkRange(a, fmt.Sprintf("%d-%d", 2*chunkSize+100, 2*chunkSize+1099), 2*chunkSize+100, 2*chunkSize+1100)
		})
		if n != 1 || by != chunkSize {
			t.Errorf("1000 bytes of chunk 2: owner served %d fetches, %d bytes; want 1, %d", n, by, chunkSize)
		}
		// The last 100 bytes: the short last chunk.
		n, by = moved(func() { checkRange(a, "-100", size-100, size) })
		if n != 1 || by != 12345 {
			t.Errorf("last 100 bytes: owner served %d fetches, %d bytes; want 1, 12345", n, by)
		}
		// Two ranges, in chunks 0 and 3 (not 1 or 2, even though the
		// response reads ahead).
		n, by = moved(func() {
			r := mustDo(t, http.MethodGet, a.base, "/big.bin", "Range: bytes=0-9,"+fmt.Sprint(3*chunkSize+5)+"-"+fmt.Sprint(3*chunkSize+14))
			parts := multiparts(t, r)
			if len(parts) != 2 || !bytes.Equal(parts[0], want[:10]) || !bytes.Equal(parts[1], want[3*chunkSize+5:3*chunkSize+15]) {
				t.Fatalf("multi-range: %d, %d parts", r.status, len(parts))
			}
		})
		if n != 2 || by != chunkSize+12345 {
			t.Errorf("chunks 0 and 3: owner served %d fetches, %d bytes; want 2, %d", n, by, chunkSize+12345)
		}
		// Nothing satisfiable: 416, and nothing moves.
		n, by = moved(func() {
			r := mustDo(t, http.MethodGet, a.base, "/big.bin", "Range: bytes="+fmt.Sprint(size+10)+"-")
			if r.status != http.StatusRequestedRangeNotSatisfiable {
				t.Fatalf("Range past the end: %d; want 416", r.status)
			}
		})
		if n != 0 || by != 0 {
			t.Errorf("416: owner served %d fetches, %d bytes; want none", n, by)
		}
		// HEAD moves nothing.
		n, by = moved(func() {
			r := mustDo(t, http.MethodHead, a.base, "/big.bin")
			if r.status != 200 || r.header.Get("Content-Length") != fmt.Sprint(size) {
				t.Fatalf("HEAD: %d, Content-Length %q", r.status, r.header.Get("Content-Length"))
			}
		})
		if n != 0 || by != 0 {
			t.Errorf("HEAD: owner served %d fetches, %d bytes; want none", n, by)
		}
	})

	t.Run("peer_asking_for_more_than_a_chunk", func(t *testing.T) {
		// A peer (here a client with a certificate from the cluster CA)
		// that asks for a large item whole is refused: the owner never
		// builds one slice of more than a chunk.
		probe, err := peering.CredentialsFromSecret(secret, "probe")
		if err != nil {
			t.Fatal(err)
		}
		n, by := moved(func() {
			st, _, err := sanGet(owner.san, probe.ClientConfig(owner.name), clusterGroup, "/big.bin")
			if err != nil || st != uint64(peering.ErrCodeTooLarge) {
				t.Fatalf("GET /big.bin whole over the SAN: status %d, %v; want %d (too large)", st, err, peering.ErrCodeTooLarge)
			}
		})
		if n != 0 || by != 0 {
			t.Errorf("owner served %d fetches, %d bytes; want none", n, by)
		}
	})

	t.Run("whole_body_from_non_owner", func(t *testing.T) {
		// b has fetched nothing yet: every chunk moves exactly once, the
		// ones after the first fetched ahead, in parallel.
		n, by := moved(func() {
			r := mustDo(t, http.MethodGet, b.base, "/big.bin")
			if r.status != 200 || !bytes.Equal(r.body, want) {
				t.Fatalf("%s GET: %d, %d bytes; want 200 and %d bytes", b.name, r.status, len(r.body), size)
			}
		})
		if n != 4 || by != size {
			t.Errorf("whole body: owner served %d fetches, %d bytes; want 4, %d", n, by, size)
		}
	})

	t.Run("hot_chunks", func(t *testing.T) {
		rng := fmt.Sprintf("%d-%d", chunkSize+1, chunkSize+4096)
		// The first requests of chunk 1 on a fetch it, the second admits it
		// to the hot cache, after which it moves no more.
		for range 2 {
			checkRange(a, rng, chunkSize+1, chunkSize+4097)
		}
		n, by := moved(func() {
			for range 3 {
				checkRange(a, rng, chunkSize+1, chunkSize+4097)
			}
		})
		if n != 0 || by != 0 {
			t.Errorf("hot chunk: owner served %d fetches, %d bytes; want none", n, by)
		}
		if g := a.status(t).group(); g.Hot == nil || g.Hot.Hits < 3 || g.tier("hot").Requests < 3 {
			t.Errorf("%s: hot %+v, tiers %+v; want 3 hot hits", a.name, g.Hot, g.Tiers)
		}
		// Chunks 1 and 3 were asked for at least twice: hot; 0 and 2 once.
		if w := a.mustWhere(t, "/big.bin"); w.Chunks != 4 || w.HotChunks != 2 || w.Resident {
			t.Errorf("%s: where /big.bin: %d of %d chunks hot, resident %v; want 2 of 4, not resident", a.name, w.HotChunks, w.Chunks, w.Resident)
		}
	})

	t.Run("owner_gone", func(t *testing.T) {
		// A response under way when the owner goes: a reads the first
		// 64 KiB of the file, the owner is stopped, then a reads the
		// rest. Chunks fetched before come from memory, the others from
		// a's own storage (the same version): the body is whole and right.
		req, err := http.NewRequest(http.MethodGet, a.base+"/big.bin", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got := make([]byte, 64<<10)
		if _, err := io.ReadFull(resp.Body, got); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: GET /big.bin: %d, %v", a.name, resp.StatusCode, err)
		}
		stopNodes(t, []*clusterNode{owner}, false)
		rest, err := io.ReadAll(io.LimitReader(resp.Body, size))
		got = append(got, rest...)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: GET /big.bin with the owner stopped mid-response: %d bytes, %v; want %d bytes, the file's", a.name, len(got), err, size)
		}
		g := a.status(t).group()
		t.Logf("%s: tiers after the owner went mid-response: %+v", a.name, g.Tiers)

		deadline := time.Now().Add(5 * time.Second)
		for {
			if m, ok := b.status(t).member(owner.name); ok && !m.Up {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still sees %s up", b.name, owner.name)
			}
			time.Sleep(50 * time.Millisecond)
		}
		before := b.status(t).group().tier("storage")
		r := mustDo(t, http.MethodGet, b.base, "/big.bin")
		if r.status != 200 || !bytes.Equal(r.body, want) {
			t.Fatalf("%s GET with the owner gone: %d, %d bytes", b.name, r.status, len(r.body))
		}
		checkRange(b, "5-5000000", 5, 5000001)
		if after := b.status(t).group().tier("storage"); after.Requests <= before.Requests {
			t.Errorf("%s: storage tier %+v → %+v; want reads from its own storage", b.name, before, after)
		}
	})
}

// multiparts returns the bodies of a multipart/byteranges response.
func multiparts(t *testing.T, r *response) [][]byte {
	t.Helper()
	mt, params, err := mime.ParseMediaType(r.header.Get("Content-Type"))
	if err != nil || r.status != http.StatusPartialContent || !strings.HasPrefix(mt, "multipart/") {
		t.Fatalf("want a 206 multipart response; got %d %q (%v)", r.status, r.header.Get("Content-Type"), err)
	}
	var out [][]byte
	mr := multipart.NewReader(bytes.NewReader(r.body), params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
}
