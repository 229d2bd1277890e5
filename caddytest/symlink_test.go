package integration

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSymlinks checks that a symbolic link inside the root is served like
// file_server serves it, and that one leading out of the root is never
// followed (a documented difference: file_server follows it).
func TestSymlinks(t *testing.T) {
	needCaddy(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "site")
	outside := filepath.Join(dir, "outside")
	writeTree(t, root, map[string][]byte{
		"real.txt":     []byte("real file\n"),
		"sub/deep.txt": []byte("deep\n"),
	})
	writeTree(t, outside, map[string][]byte{"secret.txt": []byte("SECRET outside the root\n")})
	for link, target := range map[string]string{
		"link-in.txt":  "real.txt",                           // relative, inside
		"sub/up.txt":   "../real.txt",                        // relative, inside
		"abs-in.txt":   filepath.Join(root, "real.txt"),      // absolute, inside
		"subdir-link":  "sub",                                // a directory, inside
		"link-out.txt": filepath.Join(outside, "secret.txt"), // absolute, outside
		"rel-out.txt":  "../outside/secret.txt",              // relative, outside
		"dir-out":      outside,                              // a directory, outside
		"dangling.txt": "does-not-exist",                     // nowhere
	} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	fsPort, scPort := freePort(t), freePort(t)
	n := startCaddy(t, globalBlock(admin)+fmt.Sprintf(`
http://127.0.0.1:%d {
	file_server {
		root %s
	}
}

http://127.0.0.1:%d {
	shardcache * %s
}
`, fsPort, root, scPort, root))
	waitPrimed(n, root)
	fsBase := fmt.Sprintf("http://127.0.0.1:%d", fsPort)
	scBase := fmt.Sprintf("http://127.0.0.1:%d", scPort)

	// Inside the root: as file_server.
	for _, p := range []string{"/link-in.txt", "/sub/up.txt", "/abs-in.txt", "/subdir-link/deep.txt", "/dangling.txt"} {
		want, got := get(t, fsBase, p), get(t, scBase, p)
		if want.status != got.status || string(want.body) != string(got.body) {
			t.Errorf("GET %s: file_server %d %q, shardcache %d %q", p, want.status, want.body, got.status, got.body)
		}
	}
	// Leading out: never the outside bytes.
	for _, p := range []string{"/link-out.txt", "/rel-out.txt", "/dir-out/secret.txt"} {
		for _, hs := range [][]string{nil, {"Range: bytes=0-5"}} {
			r := get(t, scBase, p, hs...)
			if r.status != http.StatusNotFound && r.status != http.StatusForbidden || strings.Contains(string(r.body), "SECRET") {
				t.Errorf("GET %s %v: %d %q; want 404 or 403 without the outside file's bytes", p, hs, r.status, r.body)
			}
		}
		if r := mustDo(t, "HEAD", scBase, p); r.status == 200 {
			t.Errorf("HEAD %s: 200 (Content-Length %s); want the outside file unknown", p, r.header.Get("Content-Length"))
		}
	}
}
