package integration

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// changeDeadline is how soon a change on disk must be served.
const changeDeadline = 2 * time.Second

// waitServed polls GET path until check accepts the response, at most
// changeDeadline after since, and returns the accepted response and how long
// it took.
func waitServed(t *testing.T, base, path string, since time.Time, what string, check func(*response) bool) (*response, time.Duration) {
	t.Helper()
	return waitServedWith(t, base, path, nil, since, what, check)
}

// waitServedWith is waitServed with request headers.
func waitServedWith(t *testing.T, base, path string, headers []string, since time.Time, what string, check func(*response) bool) (*response, time.Duration) {
	t.Helper()
	var last *response
	for i := 0; i < 1000; i++ {
		r := get(t, base, path, headers...)
		if check(r) {
			return r, time.Since(since)
		}
		last = r
		if time.Since(since) > changeDeadline {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s: not served within %s of the change; last answer to GET %s %v: %d %v %s", what, changeDeadline, path, headers, last.status, last.header, preview(last.body))
	return nil, 0
}

// TestChangesOnDisk checks that files modified, created and deleted under the
// root are served within 2s, with a new ETag.
func TestChangesOnDisk(t *testing.T) {
	needCaddy(t)
	root := filepath.Join(t.TempDir(), "site")
	writeTree(t, root, map[string][]byte{
		"mod.txt":      []byte("version one\n"),
		"del.txt":      []byte("to be deleted\n"),
		"sub/keep.txt": []byte("keep\n"),
	})
	base := startPrimed(t, root)

	r0 := get(t, base, "/mod.txt")
	if r0.status != 200 || string(r0.body) != "version one\n" {
		t.Fatalf("GET /mod.txt before the change: %d %q", r0.status, r0.body)
	}
	if r := get(t, base, "/new.txt"); r.status != http.StatusNotFound {
		t.Fatalf("GET /new.txt before it exists: %d", r.status)
	}

	// Modify (new bytes, new size), create, delete; also a file in a new
	// directory (the watcher must pick up the directory).
	now := time.Now()
	if err := os.WriteFile(filepath.Join(root, "mod.txt"), []byte("version two, longer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "new.txt"), []byte("created\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "del.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "newdir", "deep"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "newdir", "deep", "x.txt"), []byte("in a new dir\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	r1, d := waitServed(t, base, "/mod.txt", now, "modified mod.txt", func(r *response) bool {
		return r.status == 200 && string(r.body) == "version two, longer\n"
	})
	t.Logf("modification served after %s", d)
	if e0, e1 := r0.header.Get("Etag"), r1.header.Get("Etag"); e1 == "" || e0 == e1 {
		t.Errorf("ETag of mod.txt after the change: %q, before: %q; want a new one", e1, e0)
	}
	if cl := r1.header.Get("Content-Length"); cl != "20" {
		t.Errorf("Content-Length of the new mod.txt: %q, want 20", cl)
	}
	_, d = waitServed(t, base, "/new.txt", now, "created new.txt", func(r *response) bool {
		return r.status == 200 && string(r.body) == "created\n"
	})
	t.Logf("creation served after %s", d)
	_, d = waitServed(t, base, "/del.txt", now, "deleted del.txt", func(r *response) bool {
		return r.status == http.StatusNotFound
	})
	t.Logf("deletion served after %s", d)
	_, d = waitServed(t, base, "/newdir/deep/x.txt", now, "newdir/deep/x.txt", func(r *response) bool {
		return r.status == 200 && string(r.body) == "in a new dir\n"
	})
	t.Logf("file in a new directory served after %s", d)

	// The old ETag no longer matches: a conditional GET gets the new bytes.
	r := get(t, base, "/mod.txt", "If-None-Match: "+r0.header.Get("Etag"))
	if r.status != 200 || string(r.body) != "version two, longer\n" {
		t.Errorf("GET /mod.txt If-None-Match: <old ETag>: %d %q, want 200 with the new bytes", r.status, r.body)
	}
	// A second change of the same file, and a change back to earlier bytes:
	// the ETag follows the bytes.
	now = time.Now()
	if err := os.WriteFile(filepath.Join(root, "mod.txt"), []byte("version one\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r2, _ := waitServed(t, base, "/mod.txt", now, "mod.txt back to version one", func(r *response) bool {
		return r.status == 200 && string(r.body) == "version one\n"
	})
	if r2.header.Get("Etag") != r0.header.Get("Etag") {
		t.Errorf("ETag of mod.txt back to its first bytes: %s, first: %s; want equal (content hash)", r2.header.Get("Etag"), r0.header.Get("Etag"))
	}
}

// TestChangesUnderLoad rewrites a file, by rename and in place, while
// concurrent GETs run: every response must be exactly one version, with that
// version's ETag, and never an error.
func TestChangesUnderLoad(t *testing.T) {
	needCaddy(t)
	const size = 256 << 10
	versions := make([][]byte, 6)
	for i := range versions {
		// Same size, different bytes everywhere: a torn read shows.
		versions[i] = bytes.Repeat([]byte{byte('a' + i)}, size)
		copy(versions[i], fmt.Sprintf("version %d\n", i))
	}
	root := filepath.Join(t.TempDir(), "site")
	writeTree(t, root, map[string][]byte{
		"burst.bin":   versions[0],
		"inplace.bin": versions[0],
	})
	base := startPrimed(t, root)

	versionOf := func(b []byte) int {
		for i, v := range versions {
			if bytes.Equal(b, v) {
				return i
			}
		}
		return -1
	}

	for _, mode := range []string{"rename", "in place"} {
		t.Run(mode, func(t *testing.T) {
			name := "burst.bin"
			if mode == "in place" {
				name = "inplace.bin"
			}
			p := filepath.Join(root, name)
			var (
				stop     atomic.Bool
				mu       sync.Mutex
				seen     = map[int]map[string]bool{} // version → ETags
				bad      []string
				requests atomic.Int64
			)
			done := make(chan struct{})
			go func() {
				defer close(done)
				parallel(6, func(int) {
					for i := 0; i < 3000 && !stop.Load(); i++ {
						requests.Add(1)
						r, err := do("GET", base, "/"+name)
						mu.Lock()
						switch {
						case err != nil:
							bad = append(bad, err.Error())
						case r.status != 200:
							bad = append(bad, fmt.Sprintf("status %d", r.status))
						default:
							v := versionOf(r.body)
							if v < 0 {
								bad = append(bad, fmt.Sprintf("a body that is no version: %d bytes %s", len(r.body), preview(r.body)))
							} else {
								if seen[v] == nil {
									seen[v] = map[string]bool{}
								}
								seen[v][r.header.Get("Etag")] = true
							}
						}
						mu.Unlock()
					}
				})
			}()

			// Rewrite the file every 30ms for 1.5s, cycling through the
			// versions.
			last := 0
			start := time.Now()
			for i := 1; time.Since(start) < 1500*time.Millisecond; i++ {
				last = i % len(versions)
				var err error
				if mode == "rename" {
					tmp := filepath.Join(root, ".tmp-"+name)
					if err = os.WriteFile(tmp, versions[last], 0o644); err == nil {
						err = os.Rename(tmp, p)
					}
				} else {
					err = writeInPlace(p, versions[last])
				}
				if err != nil {
					t.Fatal(err)
				}
				time.Sleep(30 * time.Millisecond)
			}
			written := time.Now()
			// The last version must be served within the deadline.
			waitServed(t, base, "/"+name, written, "the last version of "+name, func(r *response) bool {
				return r.status == 200 && versionOf(r.body) == last
			})
			stop.Store(true)
			<-done

			mu.Lock()
			defer mu.Unlock()
			t.Logf("%d requests, versions seen: %d", requests.Load(), len(seen))
			for i, b := range bad {
				if i == 10 {
					t.Errorf("... %d more bad responses", len(bad)-10)
					break
				}
				t.Errorf("GET /%s during rewrites: %s", name, b)
			}
			etags := map[string]int{}
			for v, es := range seen {
				if len(es) != 1 {
					t.Errorf("version %d was served with %d different ETags: %v", v, len(es), es)
				}
				for e := range es {
					if w, dup := etags[e]; dup {
						t.Errorf("versions %d and %d were both served with ETag %s", w, v, e)
					}
					etags[e] = v
				}
			}
			if len(seen) < 2 {
				t.Errorf("only %d version(s) seen during the rewrites; want the changes to show", len(seen))
			}
		})
	}
}

// writeInPlace overwrites the file at p with data (same size) with one
// write, without truncating it first.
func writeInPlace(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// TestChangesSidecarsAndDirs checks changes to precompressed sidecars and
// to whole directories: a sidecar created, changed and removed; a directory
// removed and one renamed.
func TestChangesSidecarsAndDirs(t *testing.T) {
	needCaddy(t)
	css := []byte(strings.Repeat("p { margin: 0 }\n", 100))
	root := filepath.Join(t.TempDir(), "site")
	writeTree(t, root, map[string][]byte{
		"app.css":       css,
		"dir/a.txt":     []byte("a\n"),
		"dir/sub/b.txt": []byte("b\n"),
		"old/x.txt":     []byte("x\n"),
	})
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	port := freePort(t)
	n := startCaddy(t, globalBlock(admin)+fmt.Sprintf(`
http://127.0.0.1:%d {
	shardcache * %s {
		precompressed gzip
	}
}
`, port, root))
	waitPrimed(n, root)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	gzHdr := []string{"Accept-Encoding: gzip"}
	getGz := func() *response { return get(t, base, "/app.css", gzHdr...) }
	if r := getGz(); r.header.Get("Content-Encoding") != "" || !bytes.Equal(r.body, css) {
		t.Fatalf("GET /app.css (gzip accepted, no sidecar yet): %d %q", r.status, r.header.Get("Content-Encoding"))
	}
	gz1, gz2 := gzipBytes(css, 1), gzipBytes(css, 9)
	if bytes.Equal(gz1, gz2) {
		gz2 = append(gz2[:len(gz2):len(gz2)], 0) // trailing garbage; the server does not decode
	}

	// A sidecar appears.
	now := time.Now()
	if err := os.WriteFile(filepath.Join(root, "app.css.gz"), gz1, 0o644); err != nil {
		t.Fatal(err)
	}
	waitServedWith(t, base, "/app.css", gzHdr, now, "a new app.css.gz", func(r *response) bool {
		return r.status == 200 && r.header.Get("Content-Encoding") == "gzip" && bytes.Equal(r.body, gz1)
	})
	e1 := getGz().header.Get("Etag")

	// It changes.
	now = time.Now()
	if err := os.WriteFile(filepath.Join(root, "app.css.gz"), gz2, 0o644); err != nil {
		t.Fatal(err)
	}
	waitServedWith(t, base, "/app.css", gzHdr, now, "a changed app.css.gz", func(r *response) bool {
		return r.status == 200 && r.header.Get("Content-Encoding") == "gzip" && bytes.Equal(r.body, gz2)
	})
	if e2 := getGz().header.Get("Etag"); e2 == e1 {
		t.Errorf("ETag of the gzip variant did not change with its bytes: %s", e2)
	}
	if r := get(t, base, "/app.css"); !bytes.Equal(r.body, css) || r.header.Get("Content-Encoding") != "" {
		t.Errorf("GET /app.css without Accept-Encoding after the sidecar changed: %q, %d bytes", r.header.Get("Content-Encoding"), len(r.body))
	}

	// It goes away: the file itself is served again.
	now = time.Now()
	if err := os.Remove(filepath.Join(root, "app.css.gz")); err != nil {
		t.Fatal(err)
	}
	waitServedWith(t, base, "/app.css", gzHdr, now, "app.css after its sidecar was removed", func(r *response) bool {
		return r.status == 200 && r.header.Get("Content-Encoding") == "" && bytes.Equal(r.body, css)
	})

	// A directory removed, another renamed.
	now = time.Now()
	if err := os.RemoveAll(filepath.Join(root, "dir")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(root, "old"), filepath.Join(root, "new")); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{"/dir/a.txt": 404, "/dir/sub/b.txt": 404, "/dir/": 404, "/old/x.txt": 404, "/new/x.txt": 200} {
		waitServed(t, base, path, now, fmt.Sprintf("%s → %d", path, want), func(r *response) bool {
			return r.status == want
		})
	}
	if r := get(t, base, "/new/x.txt"); string(r.body) != "x\n" {
		t.Errorf("GET /new/x.txt: %q", r.body)
	}
}

// gzipBytes compresses b at the given level.
func gzipBytes(b []byte, level int) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, level)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

// startPrimed runs Caddy with one site serving root through shardcache
// and returns the site's base URL once root is primed.
func startPrimed(t *testing.T, root string) string {
	t.Helper()
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	port := freePort(t)
	n := startCaddy(t, globalBlock(admin)+fmt.Sprintf(`
http://127.0.0.1:%d {
	shardcache * %s
}
`, port, root))
	waitPrimed(n, root)
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}
