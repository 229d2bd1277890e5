package shardcache

import (
	"path"
	"strings"
	"testing"
)

// FuzzCleanPath checks that no request path, however encoded once decoded
// by net/http, names anything outside the root: the cleaned path is
// rooted, has no "." or ".." element, no empty element, and cleaning it
// again changes nothing.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{
		"", "/", "/a/b.css", "/../etc/passwd", "/a/../../b", "//a//b", "/./a/.",
		"a", "..", "/..", "/a/..", `/a\..\..\b`, "/%2e%2e/", "/a/b/", "/.hidden",
		"/a/./../b/../../c", "/\x00/..", "/....//....", strings.Repeat("/..", 100),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got := cleanPath(p)
		if !strings.HasPrefix(got, "/") {
			t.Fatalf("cleanPath(%q) = %q: not rooted", p, got)
		}
		if got != "/" {
			for _, el := range strings.Split(got[1:], "/") {
				if el == "" || el == "." || el == ".." {
					t.Fatalf("cleanPath(%q) = %q: element %q", p, got, el)
				}
			}
		}
		if again := cleanPath(got); again != got {
			t.Fatalf("cleanPath not idempotent: %q -> %q -> %q", p, got, again)
		}
		if want := path.Clean("/" + p); got != want {
			t.Fatalf("cleanPath(%q) = %q, path.Clean says %q", p, got, want)
		}
	})
}
