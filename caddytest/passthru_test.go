package integration

import (
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
)

// TestPassThru checks that with pass_thru a miss goes to the next handler,
// and without it is a 404.
func TestPassThru(t *testing.T) {
	needCaddy(t)
	root := filepath.Join(t.TempDir(), "site")
	writeTree(t, root, map[string][]byte{
		"index.html":    []byte("<p>index</p>\n"),
		"hello.txt":     []byte("hello\n"),
		"noindex/a.txt": []byte("a\n"),
	})
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ptPort, noPort := freePort(t), freePort(t)
	n := startCaddy(t, globalBlock(admin)+fmt.Sprintf(`
http://127.0.0.1:%d {
	route {
		shardcache {
			root %s
			pass_thru
		}
		respond "next" 200
	}
}

http://127.0.0.1:%d {
	route {
		shardcache {
			root %s
		}
		respond "next" 200
	}
}
`, ptPort, root, noPort, root))
	waitPrimed(n, root)
	pt := fmt.Sprintf("http://127.0.0.1:%d", ptPort)
	no := fmt.Sprintf("http://127.0.0.1:%d", noPort)

	for _, tc := range []struct {
		base, path string
		status     int
		body       string
	}{
		{pt, "/hello.txt", 200, "hello\n"},
		{pt, "/", 200, "<p>index</p>\n"},
		{pt, "/missing", 200, "next"},
		{pt, "/sub/missing.txt", 200, "next"},
		{pt, "/noindex/", 200, "next"}, // a directory without index is a miss
		{pt, "/hello.txt/x", 200, "next"},
		{no, "/hello.txt", 200, "hello\n"},
		{no, "/missing", http.StatusNotFound, ""},
		{no, "/noindex/", http.StatusNotFound, ""},
	} {
		r := get(t, tc.base, tc.path)
		if r.status != tc.status || string(r.body) != tc.body {
			site := "pass_thru"
			if tc.base == no {
				site = "no pass_thru"
			}
			t.Errorf("GET %s (%s): %d %q, want %d %q", tc.path, site, r.status, r.body, tc.status, tc.body)
		}
	}
	// A hit with another method is still the handler's: 405, not the next handler.
	if r := mustDo(t, "POST", pt, "/hello.txt"); r.status != http.StatusMethodNotAllowed {
		t.Errorf("POST /hello.txt (pass_thru): %d %q, want 405", r.status, r.body)
	}
}
