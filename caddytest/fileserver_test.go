package integration

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"math/rand/v2"
	"mime"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// parityTree returns the files of the tree served side by side by
// file_server and shardcache.
func parityTree() map[string][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	css := []byte(strings.Repeat("body { color: #333; margin: 0 auto; }\n", 200))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(css)
	_ = zw.Close()
	js := []byte(strings.Repeat("console.log('hello from app.js');\n", 100))
	var jsgz bytes.Buffer
	zw = gzip.NewWriter(&jsgz)
	_, _ = zw.Write(js)
	_ = zw.Close()
	png := append([]byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), random(20000)...)

	return map[string][]byte{
		"index.html":               []byte("<!doctype html><title>root</title><p>root index</p>\n"),
		"style.css":                css,
		"style.css.gz":             gz.Bytes(),
		"style.css.br":             append([]byte("BR:"), random(700)...), // not decoded by the server
		"style.css.zst":            append([]byte("ZSTD:"), random(800)...),
		"copy.css":                 css, // identical bytes under another name
		"app.js":                   js,
		"app.js.gz":                jsgz.Bytes(),
		"only.js.gz":               jsgz.Bytes(), // a sidecar whose file does not exist
		"img.png":                  png,
		"empty.txt":                nil,
		"big.bin":                  random(1 << 20),
		"README":                   []byte("This file has no extension.\nIt is plain text.\n"),
		"blob":                     append([]byte{0, 1, 2, 3, 0xff, 0xfe}, random(3000)...), // extensionless binary
		"space name.txt":           []byte("a file with a space in its name\n"),
		"ünï.txt":                  []byte("unicode name\n"),
		"data.json":                []byte(`{"a": 1, "b": [1, 2, 3]}` + "\n"),
		"feed.xml":                 []byte(`<?xml version="1.0"?><feed></feed>` + "\n"),
		"font.woff2":               random(5000),
		"movie.mp4":                random(30000),
		"doc.pdf":                  append([]byte("%PDF-1.4\n"), random(4000)...),
		"sub/index.html":           []byte("<!doctype html><p>sub index</p>\n"),
		"sub/page.html":            []byte("<!doctype html><p>sub page</p>\n"),
		"sub/deeper/file.txt":      []byte("deeper file\n"),
		"noindex/a.txt":            []byte("a dir without an index\n"),
		"htm/index.htm":            []byte("<p>index.htm only</p>\n"),
		"both/index.htm":           []byte("<p>both: htm</p>\n"),
		"both/index.html":          []byte("<p>both: html</p>\n"),
		"a/b/c.txt":                []byte("a/b/c\n"),
		".well-known/security.txt": []byte("Contact: mailto:security@example.com\n"),
		"dir.with.dots/index.html": []byte("<p>dots</p>\n"),
	}
}

// parityCase is one request sent to every server of the parity test.
type parityCase struct {
	method  string
	path    string   // raw request target
	headers []string // "Name: value"; $ETAG is replaced by the server's own ETag of path (same Accept-Encoding), $LASTMOD by the fixed mtime
}

func (c parityCase) String() string {
	return strings.TrimSpace(fmt.Sprintf("%s %s %s", c.method, c.path, strings.Join(c.headers, "; ")))
}

// comparedHeaders are the headers that must be equal between file_server
// and shardcache.
var comparedHeaders = []string{
	"Content-Type", "Content-Length", "Content-Range", "Content-Encoding",
	"Vary", "Accept-Ranges", "Allow", "Location", "Last-Modified",
}

func parityCases() []parityCase {
	var cs []parityCase
	add := func(method, path string, headers ...string) {
		cs = append(cs, parityCase{method, path, headers})
	}
	files := []string{
		"/index.html", "/style.css", "/copy.css", "/app.js", "/img.png", "/empty.txt",
		"/big.bin", "/README", "/blob", "/space%20name.txt", "/%C3%BCn%C3%AF.txt",
		"/data.json", "/feed.xml", "/font.woff2", "/movie.mp4", "/doc.pdf",
		"/sub/page.html", "/sub/deeper/file.txt", "/noindex/a.txt", "/a/b/c.txt",
		"/.well-known/security.txt", "/only.js.gz",
	}
	for _, f := range files {
		add("GET", f)
		add("HEAD", f)
	}
	// Directories and canonical redirects.
	for _, p := range []string{
		"/", "/sub/", "/sub", "/sub?x=1&y=2", "/htm/", "/htm", "/both/", "/both",
		"/noindex", "/noindex/", "/sub/deeper", "/sub/deeper/", "/dir.with.dots", "/dir.with.dots/",
		"/index.html/", "/style.css/", "/style.css/?q=1", "/sub/page.html/", "/index.html",
		"/sub/index.html", "/a", "/a/", "/a/b",
	} {
		add("GET", p)
		add("HEAD", p)
	}
	// Misses.
	for _, p := range []string{
		"/missing", "/missing.html", "/sub/missing.txt", "/style.css/extra", "/empty.txt/x",
		"/index.htm", "/etc/passwd", "/STYLE.CSS",
	} {
		add("GET", p)
	}
	// Other methods.
	for _, m := range []string{"POST", "PUT", "DELETE", "PATCH", "OPTIONS"} {
		add(m, "/style.css")
		add(m, "/sub/")
		add(m, "/missing")
	}
	add("POST", "/sub")
	add("POST", "/noindex/")
	add("PUT", "/big.bin", "Range: bytes=0-10")
	// Ranges.
	for _, r := range []string{
		"bytes=0-99", "bytes=100-", "bytes=-100", "bytes=0-0,10-19,-5", "bytes=5-10,2-3",
		"bytes=0-", "bytes=1048575-", "bytes=1048576-", "bytes=5000000-6000000", "bytes=-0",
		"bytes=abc", "bytes=10-5", "bytes=0-99,5000000-", "bytes=0-1048575", "bytes=0-9999999",
		"items=0-5",
	} {
		add("GET", "/big.bin", "Range: "+r)
	}
	add("HEAD", "/big.bin", "Range: bytes=0-99")
	add("HEAD", "/big.bin", "Range: bytes=0-9,20-29")
	add("GET", "/empty.txt", "Range: bytes=0-0")
	add("GET", "/empty.txt", "Range: bytes=-1")
	add("GET", "/img.png", "Range: bytes=0-7")
	add("GET", "/index.html", "Range: bytes=0-4,6-10")
	add("GET", "/README", "Range: bytes=5-")
	add("GET", "/style.css", "Range: bytes=0-99", "Accept-Encoding: gzip")
	add("GET", "/style.css", "Range: bytes=0-9,50-59", "Accept-Encoding: br")
	add("GET", "/sub/", "Range: bytes=0-5")
	// If-Range.
	add("GET", "/big.bin", "Range: bytes=0-99", "If-Range: $ETAG")
	add("GET", "/big.bin", "Range: bytes=0-99", `If-Range: "not-the-etag"`)
	add("GET", "/big.bin", "Range: bytes=0-99", "If-Range: W/$ETAG")
	add("GET", "/big.bin", "Range: bytes=0-99", "If-Range: $LASTMOD")
	add("GET", "/big.bin", "Range: bytes=0-99", "If-Range: Mon, 01 Jan 2001 00:00:00 GMT")
	add("GET", "/style.css", "Range: bytes=0-99", "If-Range: $ETAG", "Accept-Encoding: gzip")
	// Conditional requests.
	for _, p := range []string{"/big.bin", "/style.css", "/sub/", "/empty.txt", "/README"} {
		add("GET", p, "If-None-Match: $ETAG")
		add("HEAD", p, "If-None-Match: $ETAG")
		add("GET", p, `If-None-Match: "x", $ETAG`)
		add("GET", p, `If-None-Match: "nope"`)
		add("GET", p, "If-None-Match: W/$ETAG")
		add("GET", p, "If-None-Match: *")
		add("GET", p, "If-Modified-Since: $LASTMOD")
		add("GET", p, "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT")
		add("GET", p, "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT")
		add("GET", p, "If-Modified-Since: not a date")
		add("GET", p, `If-None-Match: "nope"`, "If-Modified-Since: $LASTMOD")
		add("GET", p, "If-Match: $ETAG")
		add("GET", p, `If-Match: "nope"`)
		add("GET", p, "If-Unmodified-Since: Sat, 01 Jan 2000 00:00:00 GMT")
		add("GET", p, "If-Unmodified-Since: $LASTMOD")
	}
	add("GET", "/style.css", "If-None-Match: $ETAG", "Accept-Encoding: gzip")
	add("GET", "/style.css", "If-None-Match: $ETAG", "Accept-Encoding: br")
	add("HEAD", "/style.css", "If-Modified-Since: $LASTMOD", "Accept-Encoding: zstd")
	// Accept-Encoding: negotiation between sidecars.
	for _, ae := range []string{
		"gzip", "br", "zstd", "br;q=0", "br;q=0, gzip", "br, gzip", "gzip, br", "identity",
		"*", "*;q=0", "gzip;q=0.5, br;q=0.9", "gzip;q=1, br;q=0.5", "zstd, gzip",
		"br;q=0, zstd;q=0, gzip;q=0", "deflate", "GZIP", "gzip;q=0", "x-gzip", "",
	} {
		for _, p := range []string{"/style.css", "/app.js", "/only.js.gz", "/sub/", "/big.bin"} {
			add("GET", p, "Accept-Encoding: "+ae)
		}
		add("HEAD", "/style.css", "Accept-Encoding: "+ae)
	}
	// Paths that try to leave the root or confuse the lookup. Sent as is.
	for _, p := range []string{
		"/../../../../etc/passwd", "/../style.css", "/%2e%2e/%2e%2e/etc/passwd",
		"/%2e%2e/style.css", "/a/..%2f..%2fetc/passwd", "/a/..%2f..%2f..%2fstyle.css",
		"/a/b/%2e%2e/b/c.txt", "/a/b/../../style.css", "/sub/../sub/page.html",
		`/a\..\..\etc\passwd`, `/sub\page.html`, "/%5c..%5c..%5cetc%5cpasswd",
		"/style.css%00", "/%00", "/style.css%00.html", "/sub/%00/", "//style.css",
		"/./style.css", "/sub/./page.html", "/sub//page.html", "/sub/.", "/sub/..",
		"/.", "/..", "/%2e", "/.well-known/", "/style%2ecss", "/sub%2fpage.html",
		"/%73tyle.css", "/sub/%2e%2e/style.css", "///style.css", "//sub//page.html", "//../style.css",
		"//sub", "//sub/",
	} {
		add("GET", p)
	}
	return cs
}

// TestFileServerParity serves one tree with file_server and with shardcache
// in one Caddy process and compares their answers to a table of requests.
// A third site serves a copy of the tree with shardcache: its ETags must be
// those of the second (the ETag is a content hash).
func TestFileServerParity(t *testing.T) {
	needCaddy(t)
	_, scBase, sc2Base := parity(t, "http")

	// Our ETag is a content hash: identical bytes, identical ETag, across
	// paths and sites; different bytes (a variant), different ETag.
	e1 := get(t, scBase, "/style.css").header.Get("Etag")
	e2 := get(t, scBase, "/copy.css").header.Get("Etag")
	e3 := get(t, sc2Base, "/copy.css").header.Get("Etag")
	if e1 == "" || e1 != e2 || e1 != e3 {
		t.Errorf("ETags of identical bytes differ: /style.css %s, /copy.css %s, copy tree /copy.css %s", e1, e2, e3)
	}
	for _, ae := range []string{"gzip", "br", "zstd"} {
		ev := get(t, scBase, "/style.css", "Accept-Encoding: "+ae).header.Get("Etag")
		if ev == "" || ev == e1 {
			t.Errorf("ETag of /style.css with Accept-Encoding %s = %q, want one of its own (identity's is %s)", ae, ev, e1)
		}
	}

	// Extensionless files: file_server sends no Content-Type, we sniff.
	for p, want := range map[string]string{
		"/README": "text/plain; charset=utf-8",
		"/blob":   "application/octet-stream",
	} {
		r := get(t, scBase, p)
		if got := r.header.Get("Content-Type"); got != want {
			t.Errorf("GET %s: Content-Type %q, want sniffed %q", p, got, want)
		}
	}

	// Documented difference: with `precompressed gzip`, style.css.gz is a
	// part of style.css, not a file of its own.
	for _, p := range []string{"/style.css.gz", "/style.css.br", "/style.css.zst", "/app.js.gz"} {
		if r := get(t, scBase, p); r.status != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404 (a precompressed sidecar is not served under its own name)", p, r.status)
		}
	}
}

// TestFileServerParityHTTPS runs the table of TestFileServerParity over
// HTTPS (HTTP/2, `tls internal`).
func TestFileServerParityHTTPS(t *testing.T) {
	needCaddy(t)
	fsBase, scBase, _ := parity(t, "https")
	for _, base := range []string{fsBase, scBase} {
		if r := get(t, base, "/index.html"); r.proto != "HTTP/2.0" {
			t.Errorf("GET %s/index.html: %s, want HTTP/2.0", base, r.proto)
		}
	}
}

// parity starts the sites of the parity tests over scheme (http or https):
// file_server, shardcache, shardcache on a copy of the tree, and shardcache
// with a budget too small for most files; it runs the table of parityCases
// against them and returns the base URLs of the first three.
func parity(t *testing.T, scheme string) (fsBase, scBase, sc2Base string) {
	t.Helper()
	treeA := filepath.Join(t.TempDir(), "a")
	treeB := filepath.Join(t.TempDir(), "b")
	files := parityTree()
	writeTree(t, treeA, files)
	writeTree(t, treeB, files)

	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	fsPort, scPort, sc2Port, sc3Port := freePort(t), freePort(t), freePort(t), freePort(t)
	global, tls := globalBlock(admin), ""
	if scheme == "https" {
		global = globalBlock(admin, "skip_install_trust", "auto_https disable_redirects")
		tls = "tls internal"
	}
	cf := global + strings.ReplaceAll(fmt.Sprintf(`
http://127.0.0.1:%d {
	TLS
	file_server {
		root %s
		index index.htm index.html
		precompressed br zstd gzip
	}
}

http://127.0.0.1:%d {
	TLS
	shardcache {
		root %s
		index index.htm index.html
		precompressed br zstd gzip
	}
}

http://127.0.0.1:%d {
	TLS
	shardcache * %s {
		memory 512MiB
		index index.htm index.html
		precompressed br zstd gzip
	}
}

http://127.0.0.1:%d {
	TLS
	shardcache {
		root %s
		memory 16KiB
		index index.htm index.html
		precompressed br zstd gzip
	}
}
`, fsPort, treeA, scPort, treeA, sc2Port, treeB, sc3Port, treeA), "TLS", tls)
	cf = strings.ReplaceAll(cf, "http://", scheme+"://")
	n := startCaddy(t, cf)
	waitPrimed(n, treeB)
	waitFor(t, 30*time.Second, "both stores of "+treeA+" primed", func() bool {
		return len(n.findLogs(func(e logEntry) bool { return isPrimed(e) && sameRoot(e, treeA) })) == 2
	})
	small := 0
	for _, e := range n.findLogs(func(e logEntry) bool { return isPrimed(e) && sameRoot(e, treeA) }) {
		if m, _ := e.num("memory"); m == 16<<10 {
			small++
			if r, ok := e.num("resident_bytes"); !ok || r > 16<<10 {
				t.Errorf("the 16KiB store holds %v bytes: %s", r, e)
			}
		}
	}
	if small != 1 {
		t.Errorf("%d primed log lines with memory 16384 for %s, want 1", small, treeA)
	}

	fsBase = fmt.Sprintf("%s://127.0.0.1:%d", scheme, fsPort)
	scBase = fmt.Sprintf("%s://127.0.0.1:%d", scheme, scPort)
	sc2Base = fmt.Sprintf("%s://127.0.0.1:%d", scheme, sc2Port)
	// The fourth site holds almost nothing in memory: it serves the same
	// table from storage.
	sc3Base := fmt.Sprintf("%s://127.0.0.1:%d", scheme, sc3Port)
	lastMod := fixedTime.Format(http.TimeFormat)

	// etagOf returns base's ETag for c.path with c's Accept-Encoding.
	etagOf := func(base string, c parityCase) string {
		var hs []string
		for _, h := range c.headers {
			if strings.HasPrefix(strings.ToLower(h), "accept-encoding:") {
				hs = append(hs, h)
			}
		}
		r := get(t, base, c.path, hs...)
		return r.header.Get("Etag")
	}
	send := func(base string, c parityCase) *response {
		hs := make([]string, len(c.headers))
		var etag string
		for i, h := range c.headers {
			if strings.Contains(h, "$ETAG") && etag == "" {
				etag = etagOf(base, c)
				if etag == "" {
					t.Errorf("%s: %s has no ETag to use", c, base)
				}
			}
			h = strings.ReplaceAll(h, "$ETAG", etag)
			hs[i] = strings.ReplaceAll(h, "$LASTMOD", lastMod)
		}
		return mustDo(t, c.method, base, c.path, hs...)
	}

	mismatches := 0
	for _, c := range parityCases() {
		want := send(fsBase, c)
		got := send(scBase, c)
		got2 := send(sc2Base, c)
		got3 := send(sc3Base, c)
		if d := diffResponses(c, want, got); d != "" {
			mismatches++
			if mismatches <= 40 {
				t.Errorf("%s:\n%s", c, d)
			}
		}
		if d := diffResponses(c, want, got3); d != "" {
			mismatches++
			if mismatches <= 40 {
				t.Errorf("%s (served from storage: memory 16KiB):\n%s", c, d)
			}
		}
		checkETags(t, c, want, got, got2)
		checkETags(t, c, want, got, got3)
	}
	if mismatches > 40 {
		t.Errorf("... and %d more mismatches", mismatches-40)
	}
	return fsBase, scBase, sc2Base
}

// diffResponses describes how got differs from want ("" if it does not).
func diffResponses(c parityCase, want, got *response) string {
	var d []string
	if want.status != got.status {
		d = append(d, fmt.Sprintf("  status: file_server %d, shardcache %d", want.status, got.status))
	}
	wb, wh := normaliseMultipart(want)
	gb, gh := normaliseMultipart(got)
	if !bytes.Equal(wb, gb) {
		d = append(d, fmt.Sprintf("  body: file_server %d bytes %s, shardcache %d bytes %s", len(wb), preview(wb), len(gb), preview(gb)))
	}
	extensionless := filepath.Ext(strings.SplitN(c.path, "?", 2)[0]) == ""
	for _, k := range comparedHeaders {
		if k == "Content-Type" && extensionless && wh.Get(k) == "" && gh.Get(k) != "" && got.status != http.StatusNotModified {
			continue // we sniff, file_server sends none (checked below)
		}
		w, g := strings.Join(wh.Values(k), ", "), strings.Join(gh.Values(k), ", ")
		if w != g {
			d = append(d, fmt.Sprintf("  %s: file_server %q, shardcache %q", k, w, g))
		}
	}
	return strings.Join(d, "\n")
}

// normaliseMultipart replaces the random multipart boundary of r in its
// Content-Type and body by a fixed one.
func normaliseMultipart(r *response) ([]byte, http.Header) {
	h := r.header.Clone()
	ct := h.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || !strings.HasPrefix(mt, "multipart/") || params["boundary"] == "" {
		return r.body, h
	}
	b := params["boundary"]
	h.Set("Content-Type", strings.ReplaceAll(ct, b, "BOUNDARY"))
	return bytes.ReplaceAll(r.body, []byte(b), []byte("BOUNDARY")), h
}

func preview(b []byte) string {
	if len(b) > 60 {
		return fmt.Sprintf("%q...", b[:60])
	}
	return fmt.Sprintf("%q", b)
}

var strongETagRe = regexp.MustCompile(`^"[\x21\x23-\x7e\x80-\xff]+"$`)

// checkETags checks the ETags of one case: present where file_server has
// one, strong, and the same on both shardcache sites (identical bytes).
func checkETags(t *testing.T, c parityCase, fs, sc, sc2 *response) {
	t.Helper()
	fe, se, se2 := fs.header.Get("Etag"), sc.header.Get("Etag"), sc2.header.Get("Etag")
	if fe != "" && se == "" && fs.status == sc.status {
		t.Errorf("%s: file_server sends ETag %s, shardcache none", c, fe)
	}
	if se != "" && !strongETagRe.MatchString(se) {
		t.Errorf("%s: ETag %s is not a strong entity tag", c, se)
	}
	if se != se2 {
		t.Errorf("%s: ETags differ between two shardcache sites with identical trees: %q and %q", c, se, se2)
	}
	if sc.status != sc2.status || !bytes.Equal(sc.body, sc2.body) && !strings.HasPrefix(sc.header.Get("Content-Type"), "multipart/") {
		t.Errorf("%s: the two shardcache sites disagree: %d (%d bytes) and %d (%d bytes)", c, sc.status, len(sc.body), sc2.status, len(sc2.body))
	}
}

// waitPrimed waits until the log says the store of root has finished
// priming.
func waitPrimed(n *node, root string) logEntry {
	n.t.Helper()
	return n.waitLog(30*time.Second, "priming of "+root+" finished", func(e logEntry) bool {
		return isPrimed(e) && sameRoot(e, root)
	})
}

// sameRoot reports whether the log entry is about the store of root.
func sameRoot(e logEntry, root string) bool {
	r := e.str("root")
	if r == "" {
		return false
	}
	if r == root {
		return true
	}
	// Caddy runs in repoRoot: a relative root is relative to it.
	abs := func(p string) string {
		if !filepath.IsAbs(p) {
			p = filepath.Join(repoRoot, p)
		}
		return filepath.Clean(p)
	}
	return abs(r) == abs(root)
}
