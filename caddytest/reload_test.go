package integration

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"
)

// TestReload reloads a config 20 times with the same shardcache settings
// (and a changed header elsewhere, so Caddy really reloads): the store must
// be primed once, goroutines and RSS must not grow; then a reload with a new
// root primes it and serves it.
func TestReload(t *testing.T) {
	needCaddy(t)
	rng := rand.New(rand.NewPCG(6, 6))
	mkTree := func(tag string) map[string][]byte {
		files := map[string][]byte{}
		for i := 0; i < 64; i++ { // 16 MiB
			b := make([]byte, 256<<10)
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
			copy(b, fmt.Sprintf("%s file %d\n", tag, i))
			files[fmt.Sprintf("f%02d.bin", i)] = b
		}
		files["index.html"] = []byte("<p>" + tag + "</p>\n")
		return files
	}
	rootA, rootB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	filesA, filesB := mkTree("tree A"), mkTree("tree B")
	writeTree(t, rootA, filesA)
	writeTree(t, rootB, filesB)

	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	port, other := freePort(t), freePort(t)
	config := func(root string, gen int) string {
		return globalBlock(admin) + fmt.Sprintf(`
http://127.0.0.1:%d {
	shardcache * %s {
		memory 64MiB
	}
}

http://127.0.0.1:%d {
	header X-Generation %d
	respond "other site"
}
`, port, root, other, gen)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	otherBase := fmt.Sprintf("http://127.0.0.1:%d", other)

	n := startCaddy(t, config(rootA, 0))
	waitPrimed(n, rootA)
	checkFiles := func(when string, files map[string][]byte, sample int) {
		t.Helper()
		i := 0
		for name, want := range files {
			if i == sample {
				break
			}
			i++
			r := get(t, base, "/"+name)
			if r.status != 200 || !bytes.Equal(r.body, want) {
				t.Fatalf("%s: GET /%s: %d, %d bytes %s", when, name, r.status, len(r.body), preview(r.body))
			}
		}
	}
	checkFiles("after start", filesA, len(filesA))

	// Warm up: the first reloads create state that stays (pools, buffers).
	gen := 1
	for ; gen <= 3; gen++ {
		n.reload(config(rootA, gen))
	}
	time.Sleep(700 * time.Millisecond) // the grace period of the old servers
	baseGoroutines := n.goroutines()
	baseRSS := n.rss()

	const reloads = 20
	for i := 0; i < reloads; i++ {
		n.reload(config(rootA, gen))
		if r := get(t, otherBase, "/"); r.header.Get("X-Generation") != fmt.Sprint(gen) {
			t.Fatalf("reload %d did not take: X-Generation %q, want %d", i, r.header.Get("X-Generation"), gen)
		}
		gen++
		checkFiles(fmt.Sprintf("after reload %d", i+1), filesA, 4)
	}
	checkFiles("after the reloads", filesA, len(filesA))

	starts := n.findLogs(func(e logEntry) bool { return isPrimingStart(e) && sameRoot(e, rootA) })
	primed := n.findLogs(func(e logEntry) bool { return isPrimed(e) && sameRoot(e, rootA) })
	if len(starts) != 1 || len(primed) != 1 {
		t.Errorf("after %d reloads with the same root and memory: %d priming starts and %d priming finishes of %s in the log, want 1 and 1", reloads+3, len(starts), len(primed), rootA)
	}

	// Goroutines: the old servers stop within the grace period.
	var g int
	for i := 0; i < 40; i++ {
		if g = n.goroutines(); g <= baseGoroutines+8 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if g > baseGoroutines+8 {
		t.Errorf("goroutines: %d after %d reloads, %d before; want at most %d", g, reloads, baseGoroutines, baseGoroutines+8)
	}
	rss := n.rss()
	margin := max(int64(24<<20), baseRSS/4)
	if rss > baseRSS+margin {
		t.Errorf("RSS: %d MiB after %d reloads, %d MiB before; want at most %d MiB more (a re-read of the root is 16 MiB)", rss>>20, reloads, baseRSS>>20, margin>>20)
	}
	t.Logf("goroutines %d → %d, RSS %d → %d MiB", baseGoroutines, g, baseRSS>>20, rss>>20)

	// A changed root primes the new root and serves it.
	n.reload(config(rootB, gen))
	waitPrimed(n, rootB)
	checkFiles("after the reload with a new root", filesB, len(filesB))
	if starts := n.findLogs(func(e logEntry) bool { return isPrimingStart(e) && sameRoot(e, rootB) }); len(starts) != 1 {
		t.Errorf("%d priming starts of the new root %s, want 1", len(starts), rootB)
	}
	if r := get(t, base, "/"); string(r.body) != "<p>tree B</p>\n" {
		t.Errorf("GET / after the change of root: %d %q", r.status, r.body)
	}
	// And back: the old store was released, so the first root primes anew.
	n.reload(config(rootA, gen+1))
	waitFor(t, 10*time.Second, "a second priming of the first root", func() bool {
		return len(n.findLogs(func(e logEntry) bool { return isPrimed(e) && sameRoot(e, rootA) })) == 2
	})
	checkFiles("after the reload back to the first root", filesA, len(filesA))
}
