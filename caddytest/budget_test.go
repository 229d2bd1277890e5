package integration

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// TestBudget serves a root of 8 MiB with a budget of 2 MiB: every file must
// still be served byte-exact, and the log must warn with the numbers.
func TestBudget(t *testing.T) {
	needCaddy(t)
	rng := rand.New(rand.NewPCG(4, 4))
	files := map[string][]byte{}
	total := 0
	// Sizes from 1 KiB to 1 MiB: 8 MiB in all.
	for i := 0; total < 8<<20; i++ {
		size := 1 << (10 + i%11) // 1 KiB .. 1 MiB
		if total+size > 8<<20 {
			size = 8<<20 - total
		}
		b := make([]byte, size)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		files[fmt.Sprintf("d%d/f%03d.bin", i%4, i)] = b
		total += size
	}
	root := filepath.Join(t.TempDir(), "site")
	writeTree(t, root, files)

	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	port := freePort(t)
	n := startCaddy(t, globalBlock(admin)+fmt.Sprintf(`
http://127.0.0.1:%d {
	shardcache * %s {
		memory 2MiB
	}
}
`, port, root))
	waitPrimed(n, root)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	check := func(round string) {
		for name, want := range files {
			r := get(t, base, "/"+name)
			if r.status != 200 || !bytes.Equal(r.body, want) {
				t.Errorf("%s: GET /%s: %d, %d bytes, want 200 with its %d bytes", round, name, r.status, len(r.body), len(want))
			}
			if cl := r.header.Get("Content-Length"); cl != strconv.Itoa(len(want)) {
				t.Errorf("%s: GET /%s: Content-Length %q, want %d", round, name, cl, len(want))
			}
			rr := get(t, base, "/"+name, "Range: bytes=100-199")
			if rr.status != 206 || !bytes.Equal(rr.body, want[100:200]) {
				t.Errorf("%s: GET /%s Range: bytes=100-199: %d, %d bytes", round, name, rr.status, len(rr.body))
			}
		}
	}
	check("first round")
	check("second round") // files not held are read again, not cached beyond the budget

	warns := n.findLogs(isBudgetWarning)
	if len(warns) == 0 {
		t.Fatalf("no budget warning in the log")
	}
	w := warns[0]
	if lvl := w.str("level"); lvl != "warn" {
		t.Errorf("budget warning logged at level %q, want warn: %s", lvl, w)
	}
	// The numbers: the budget (2 MiB) and the total (8 MiB) must be in the
	// entry, as numbers or human-readable.
	text := w.String()
	if !mentionsSize(text, 2<<20) {
		t.Errorf("budget warning does not give the budget (2 MiB): %s", text)
	}
	if !mentionsSize(text, int64(total)) {
		t.Errorf("budget warning does not give the total size of the root (%d bytes): %s", total, text)
	}
	if !strings.Contains(text, root) {
		t.Errorf("budget warning does not name the root %s: %s", root, text)
	}

	// The status reports the arenas the held bodies live in (Linux): at
	// least the bytes held (extents are rounded up), never past the
	// budget's worth plus rounding.
	var st struct {
		Groups []struct {
			Memory int64 `json:"memory"`
		} `json:"groups"`
		Arenas *struct {
			Arenas int64 `json:"arenas"`
			Used   int64 `json:"used_bytes"`
			Mapped int64 `json:"mapped_bytes"`
		} `json:"arenas"`
	}
	cn := &clusterNode{node: n, name: "n1"}
	if err := cn.adminGet("/shardcache/status", &st); err != nil {
		t.Fatal(err)
	}
	switch {
	case runtime.GOOS != "linux":
		if st.Arenas != nil {
			t.Errorf("status reports arenas on %s: %+v", runtime.GOOS, *st.Arenas)
		}
	case st.Arenas == nil:
		t.Error("status reports no arenas on Linux (bodies held outside the Go heap)")
	case len(st.Groups) != 1 || st.Groups[0].Memory == 0:
		t.Errorf("status groups %+v: want one holding bytes", st.Groups)
	case st.Arenas.Arenas < 1 || st.Arenas.Used < st.Groups[0].Memory || st.Arenas.Used > 2<<20+64*int64(len(files)) || st.Arenas.Mapped < st.Arenas.Used:
		t.Errorf("status arenas %+v with %d bytes held under a 2 MiB budget: want used between them, within mapped", *st.Arenas, st.Groups[0].Memory)
	}

	t.Logf("RSS after two rounds: %d MiB", n.rss()>>20)
}

// mentionsSize reports whether s contains n as a plain number or in one of
// the usual human-readable forms.
func mentionsSize(s string, n int64) bool {
	forms := []string{
		strconv.FormatInt(n, 10),
		fmt.Sprintf("%d MiB", n>>20), fmt.Sprintf("%dMiB", n>>20),
		fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)), fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)),
		fmt.Sprintf("%.1f MB", float64(n)/1e6), fmt.Sprintf("%.0f MB", float64(n)/1e6),
		fmt.Sprintf("%.1fMiB", float64(n)/(1<<20)),
	}
	for _, f := range forms {
		if strings.Contains(s, f) {
			return true
		}
	}
	return false
}
