package integration

// Helpers of the browser tests (browser_test.go): finding Chromium, driving
// it headless with chromedp, and recording every network request of a page
// from the DevTools protocol's Network events.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// chromiumNames are the executables looked for in PATH, in order, when
// SHARDCACHE_CHROMIUM does not name one.
var chromiumNames = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless-shell"}

// findChromium returns the Chromium to drive: $SHARDCACHE_CHROMIUM, or the
// first of chromiumNames in PATH. When there is none it skips the test,
// loudly: the browser tests are the only ones that see the site as a
// browser does.
func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SHARDCACHE_CHROMIUM"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("SHARDCACHE_CHROMIUM=%s: %v", p, err)
		}
		return p
	}
	for _, name := range chromiumNames {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := fmt.Sprintf("BROWSER TEST SKIPPED: no Chromium found (looked for %s in PATH and $SHARDCACHE_CHROMIUM). "+
		"Install it (Debian: apt-get install -y chromium; .ci/run does) to test the site in a real browser over HTTP/2 and HTTP/3.",
		strings.Join(chromiumNames, ", "))
	fmt.Fprintln(os.Stderr, "\n*** "+msg+" ***")
	t.Skip(msg)
	return ""
}

// browser is one headless Chromium process with one tab.
type browser struct {
	t      *testing.T
	ctx    context.Context // the tab's chromedp context
	cancel func()
	out    *lockedBuffer // Chromium's stdout and stderr

	mu   sync.Mutex
	reqs map[network.RequestID]*browserRequest
	seq  []network.RequestID // in the order they were sent
}

// browserRequest is what the Network events told of one request.
type browserRequest struct {
	id       network.RequestID
	url      string
	method   string
	rng      string // the Range request header, if any
	typ      network.ResourceType
	status   int64
	protocol string // "h2", "h3", "http/1.1"
	header   map[string]string
	bytes    int64 // body bytes (the sum of dataReceived)
	done     bool  // loadingFinished
	failed   string
	canceled bool
}

// path is the request's URL path.
func (r *browserRequest) path() string {
	p := r.url
	if i := strings.Index(p, "://"); i >= 0 {
		p = p[i+3:]
		if j := strings.IndexByte(p, '/'); j >= 0 {
			p = p[j:]
		} else {
			p = "/"
		}
	}
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	return p
}

// contentRange parses the response's Content-Range (bytes a-b/total).
func (r *browserRequest) contentRange() (first, last, total int64, ok bool) {
	v := r.header["content-range"]
	var err1, err2, err3 error
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	span, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(span, "-")
	if !found {
		return 0, 0, 0, false
	}
	first, err1 = strconv.ParseInt(a, 10, 64)
	last, err2 = strconv.ParseInt(b, 10, 64)
	total, err3 = strconv.ParseInt(tot, 10, 64)
	return first, last, total, err1 == nil && err2 == nil && err3 == nil
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() < 1<<20 {
		l.b.Write(p)
	}
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startBrowser starts headless Chromium (bin) with the extra flags given
// ("name" or "name=value"), its profile in a temp dir, and opens a tab with
// the HTTP cache off and every Network event recorded. It trusts any
// certificate: the sites use `tls internal`, whose root the browser does
// not know. Chromium is stopped when the test ends.
func startBrowser(t *testing.T, bin string, flags ...string) *browser {
	t.Helper()
	b := &browser{t: t, out: &lockedBuffer{}, reqs: map[network.RequestID]*browserRequest{}}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox, // tests may run as root (CI containers)
		chromedp.WindowSize(1280, 1024),
		chromedp.Flag("ignore-certificate-errors", true),
		chromedp.Flag("mute-audio", true),
		chromedp.Flag("autoplay-policy", "no-user-gesture-required"),
		chromedp.CombinedOutput(b.out),
	)
	for _, f := range flags {
		name, val, ok := strings.Cut(f, "=")
		if ok {
			opts = append(opts, chromedp.Flag(name, val))
		} else {
			opts = append(opts, chromedp.Flag(name, true))
		}
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	b.ctx = ctx
	b.cancel = func() { cancel(); acancel() }
	t.Cleanup(func() {
		b.cancel()
		if t.Failed() {
			t.Logf("chromium output:\n%s", tail(b.out.String(), 8<<10))
		}
	})

	// The first Run starts the browser; it must not have a timeout (it
	// would stop the browser), so bound it from outside.
	started := make(chan error, 1)
	go func() {
		_, err := chromedp.Run(ctx, chromedp.Evaluate[chromedp.Void]("1"))
		started <- err
	}()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("starting %s: %v\n%s", bin, err, tail(b.out.String(), 8<<10))
		}
	case <-time.After(60 * time.Second):
		b.cancel()
		t.Fatalf("starting %s: no tab after 60s\n%s", bin, tail(b.out.String(), 8<<10))
	}
	if err := chromedp.Listen(ctx, b.record); err != nil {
		t.Fatalf("listening to the tab's events: %v", err)
	}
	if _, err := chromedp.Call(ctx, network.SetCacheDisabled, network.SetCacheDisabledParams{CacheDisabled: true}); err != nil {
		t.Fatalf("Network.setCacheDisabled: %v", err)
	}
	return b
}

// spkiHash returns the base64 SHA-256 of the public key of the
// certificate the TLS server at addr presents (Chromium's
// --ignore-certificate-errors-spki-list takes it).
func spkiHash(t *testing.T, addr string) string {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS to %s: %v", addr, err)
	}
	defer conn.Close()
	sum := sha256.Sum256(conn.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// tail returns the last max bytes of s.
func tail(s string, max int) string {
	if len(s) > max {
		return "...\n" + s[len(s)-max:]
	}
	return s
}

// record keeps what a Network event says (it runs on the tab's reader
// goroutine: quick, no command).
func (b *browser) record(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	get := func(id network.RequestID) *browserRequest {
		r := b.reqs[id]
		if r == nil {
			r = &browserRequest{id: id, header: map[string]string{}}
			b.reqs[id] = r
			b.seq = append(b.seq, id)
		}
		return r
	}
	switch e := ev.(type) {
	case *network.EventRequestWillBeSent:
		r := get(e.RequestID)
		r.url, r.method, r.typ = e.Request.URL, e.Request.Method, e.Type
		for k, v := range e.Request.Headers {
			if strings.EqualFold(k, "range") {
				r.rng = fmt.Sprint(v)
			}
		}
	case *network.EventResponseReceived:
		r := get(e.RequestID)
		r.url, r.typ = e.Response.URL, e.Type
		r.status, r.protocol = e.Response.Status, e.Response.Protocol
		for k, v := range e.Response.Headers {
			r.header[strings.ToLower(k)] = fmt.Sprint(v)
		}
	case *network.EventDataReceived:
		get(e.RequestID).bytes += e.DataLength
	case *network.EventLoadingFinished:
		get(e.RequestID).done = true
	case *network.EventLoadingFailed:
		r := get(e.RequestID)
		r.failed, r.canceled = e.ErrorText, e.Canceled
		if r.failed == "" {
			r.failed = "failed"
		}
	}
}

// requests returns copies of the requests recorded so far, in order, and
// forgets them.
func (b *browser) takeRequests() []browserRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []browserRequest
	for _, id := range b.seq {
		r := *b.reqs[id]
		r.header = map[string]string{}
		for k, v := range b.reqs[id].header {
			r.header[k] = v
		}
		out = append(out, r)
	}
	b.reqs = map[network.RequestID]*browserRequest{}
	b.seq = nil
	return out
}

// settled reports whether every recorded request has finished or failed.
func (b *browser) settled() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range b.reqs {
		if !r.done && r.failed == "" {
			return false
		}
	}
	return true
}

// run runs the action on the tab, bounded by timeout.
func browserRun[T any](b *browser, timeout time.Duration, a chromedp.Action[T]) (T, error) {
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	return chromedp.Run(ctx, a)
}

// body returns the response body of a request of the current page.
func (b *browser) body(id network.RequestID) ([]byte, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	res, err := chromedp.Call(ctx, network.GetResponseBody, network.GetResponseBodyParams{RequestID: id})
	if err != nil {
		return nil, err
	}
	return res.Body, nil
}

// artifactDir returns the directory where the browser tests write files
// for people to look at (screenshots): $SHARDCACHE_ARTIFACTS if set (made if
// missing), else a new temp dir that outlives the test (t.TempDir is removed
// when it ends). Its path is logged.
func artifactDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("SHARDCACHE_ARTIFACTS"); d != "" {
		d = filepath.Join(d, t.Name())
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	d, err := os.MkdirTemp("", "shardcache-"+strings.ReplaceAll(t.Name(), "/", "-")+"-")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// resourceTable formats requests as a table: protocol, status, bytes,
// type, range, path and the node that answered (X-Node).
func resourceTable(reqs []browserRequest) string {
	rows := [][]string{{"PROTO", "STATUS", "BYTES", "TYPE", "RANGE", "NODE", "PATH", "END"}}
	for _, r := range reqs {
		end := "finished"
		if r.failed != "" {
			end = r.failed
		} else if !r.done {
			end = "open"
		}
		rng := r.header["content-range"]
		if rng == "" {
			rng = "-"
		}
		rows = append(rows, []string{r.protocol, strconv.FormatInt(r.status, 10), strconv.FormatInt(r.bytes, 10),
			string(r.typ), rng, r.header["x-node"], r.path(), end})
	}
	width := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			width[i] = max(width[i], len(c))
		}
	}
	var s strings.Builder
	for _, row := range rows {
		for i, c := range row {
			fmt.Fprintf(&s, "%-*s  ", width[i], c)
		}
		s.WriteString("\n")
	}
	return s.String()
}

// byPath groups requests by URL path.
func byPath(reqs []browserRequest) map[string][]browserRequest {
	out := map[string][]browserRequest{}
	for _, r := range reqs {
		out[r.path()] = append(out[r.path()], r)
	}
	return out
}

// sortedPaths returns the keys of m, sorted.
func sortedPaths[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
