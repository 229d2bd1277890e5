package integration

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The big tree: bigFiles files of bigFileSize bytes (300 MiB), shared by the
// tests that need a root that takes a while to read.
const (
	bigFiles    = 2400
	bigFileSize = 128 << 10
	bigDirs     = 24
)

var (
	bigOnce sync.Once
	bigRoot string
	bigErr  error
	bigBase []byte // the bytes every big file is cut from
)

// bigTree returns the root of the 300 MiB tree, creating it on first use.
func bigTree(t *testing.T) string {
	t.Helper()
	bigOnce.Do(func() {
		start := time.Now()
		rng := rand.New(rand.NewPCG(7, 7))
		bigBase = make([]byte, 1<<20+bigFileSize)
		for i := 0; i < len(bigBase); i += 8 {
			binary.LittleEndian.PutUint64(bigBase[i:], rng.Uint64())
		}
		bigRoot = filepath.Join(sharedDir, "big")
		for d := 0; d < bigDirs; d++ {
			if bigErr = os.MkdirAll(filepath.Join(bigRoot, fmt.Sprintf("d%02d", d)), 0o755); bigErr != nil {
				return
			}
		}
		var errOnce sync.Once
		parallel(4, func(w int) {
			for i := w; i < bigFiles; i += 4 {
				if err := os.WriteFile(filepath.Join(bigRoot, bigName(i)), bigContent(i), 0o644); err != nil {
					errOnce.Do(func() { bigErr = err })
					return
				}
			}
		})
		if testing.Verbose() {
			fmt.Printf("integration: wrote the 300 MiB tree in %s\n", time.Since(start).Round(time.Millisecond))
		}
	})
	if bigErr != nil {
		t.Fatalf("writing the big tree: %v", bigErr)
	}
	return bigRoot
}

// bigName is the path (relative to the root) of big file i.
func bigName(i int) string { return fmt.Sprintf("d%02d/f%04d.bin", i%bigDirs, i) }

// bigContent returns the bytes of big file i: a slice of bigBase that
// depends on i, with i written at the start, so every file differs.
func bigContent(i int) []byte {
	off := (i * 4099) % (len(bigBase) - bigFileSize)
	b := make([]byte, bigFileSize)
	copy(b, bigBase[off:off+bigFileSize])
	binary.LittleEndian.PutUint64(b, uint64(i))
	return b
}

// TestPrimingDoesNotBlock requests files from a 300 MiB root as soon as the
// port opens: every answer must be the right bytes, also before priming has
// finished.
func TestPrimingDoesNotBlock(t *testing.T) {
	needCaddy(t)
	root := bigTree(t)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	// Start requesting before Caddy is even up: the first request that
	// connects is the first the server can answer.
	var (
		started  = time.Now()
		stop     atomic.Bool
		mu       sync.Mutex
		bad      []string
		okTimes  []time.Time // completion times of good answers
		attempts atomic.Int64
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		parallel(4, func(w int) {
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			for i := 0; i < 4000 && !stop.Load() && time.Since(started) < 60*time.Second; i++ {
				f := rng.IntN(bigFiles)
				attempts.Add(1)
				r, err := do("GET", base, "/"+bigName(f))
				if err != nil {
					var op *net.OpError
					if errors.As(err, &op) && op.Op == "dial" {
						time.Sleep(5 * time.Millisecond) // not listening yet
						continue
					}
				}
				mu.Lock()
				switch {
				case err != nil:
					bad = append(bad, fmt.Sprintf("GET /%s: %v", bigName(f), err))
				case r.status != 200:
					bad = append(bad, fmt.Sprintf("GET /%s: status %d", bigName(f), r.status))
				case !bytes.Equal(r.body, bigContent(f)):
					bad = append(bad, fmt.Sprintf("GET /%s: wrong bytes (%d bytes)", bigName(f), len(r.body)))
				default:
					okTimes = append(okTimes, time.Now())
				}
				mu.Unlock()
			}
		})
	}()

	n := startCaddy(t, globalBlock(admin)+fmt.Sprintf(`
http://127.0.0.1:%d {
	shardcache * %s {
		memory 1GiB
	}
}
`, port, root))
	primed := waitPrimed(n, root)
	// A few more requests after priming, then stop.
	time.Sleep(200 * time.Millisecond)
	stop.Store(true)
	<-done

	ts, ok := primed.num("ts")
	if !ok {
		t.Fatalf("primed log entry has no ts: %s", primed)
	}
	primedAt := time.Unix(0, int64(ts*1e9))
	mu.Lock()
	defer mu.Unlock()
	before := 0
	for _, at := range okTimes {
		if at.Before(primedAt) {
			before++
		}
	}
	t.Logf("%d requests answered right, %d of them before the primed log line; %d attempts", len(okTimes), before, attempts.Load())
	for i, b := range bad {
		if i == 10 {
			t.Errorf("... %d more", len(bad)-10)
			break
		}
		t.Error(b)
	}
	if len(okTimes) == 0 {
		t.Error("no request was answered")
	}
	if before == 0 {
		// Depends on the machine; not a failure of the server.
		t.Logf("note: priming finished before any request was answered; the test did not exercise serving during priming")
	}
	if s := n.findLogs(isPrimingProgress); len(s) == 0 {
		t.Logf("note: no priming progress line in the log (priming took %s)", primedAt.Sub(started).Round(time.Millisecond))
	}
}

// TestValidateDoesNotPrime runs `caddy validate` on a config whose root is
// the 300 MiB tree: it must not read the tree.
func TestValidateDoesNotPrime(t *testing.T) {
	needCaddy(t)
	root := bigTree(t)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	port := freePort(t)
	cf := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(cf, []byte(globalBlock(admin)+fmt.Sprintf(`
http://127.0.0.1:%d {
	shardcache * %s {
		memory 1GiB
	}
}
`, port, root)), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	stdout, stderr, err := runCaddySplit(t, 30*time.Second, "validate", "--config", cf, "--adapter", "caddyfile")
	took := time.Since(start)
	if err != nil {
		t.Fatalf("caddy validate: %v\n%s%s", err, stdout, stderr)
	}
	t.Logf("caddy validate took %s", took.Round(time.Millisecond))
	logPath := filepath.Join(t.TempDir(), "validate.log")
	if err := os.WriteFile(logPath, []byte(stdout+stderr), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, e := range readLogEntries(t, logPath) {
		if isPrimingStart(e) || isPrimingProgress(e) || isPrimed(e) {
			t.Errorf("caddy validate primed the store: %s", e)
		}
	}
	if took > 10*time.Second {
		t.Errorf("caddy validate took %s; it must not read the tree", took)
	}
	// It must not have bound the site's port either.
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Errorf("the site port is not free after caddy validate: %v", err)
	} else {
		ln.Close()
	}
}
