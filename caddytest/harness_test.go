// Package integration holds the end-to-end tests of caddy-shardcache: they
// build the Caddy binary of cmd/caddy once, run it as a child process with
// real Caddyfiles and talk to it over HTTP on loopback.
//
// Run them from the repository root with the same flags the binary is built
// with, so that the build cache is shared:
//
//	CGO_ENABLED=0 go test -trimpath -tags nobadger,nomysql,nopgx -count=1 ./caddytest/
//
// With -short they are skipped.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// raceMode (SHARDCACHE_RACE=1) runs every test on a Caddy built with the
// race detector (-race, CGO_ENABLED=1, the same -trimpath and tags, into a
// path of its own; CADDYTEST_RACE_BIN names one built beforehand), and
// fails a test when a node it started reports a data race (see
// node.checkRaces). The race-built Caddy is several times slower: use it
// for the cluster, chunk and fault tests, e.g.
//
//	SHARDCACHE_RACE=1 CGO_ENABLED=0 go test -trimpath -tags nobadger,nomysql,nopgx -count=1 -run 'TestCluster|TestChunk|TestFault' ./caddytest/
var raceMode = os.Getenv("SHARDCACHE_RACE") == "1"

// buildFlags are the flags of the Caddy build. The test binary must be built
// with the same ones (see the package doc) so both share the build cache.
var buildFlags = []string{"-trimpath", "-tags", "nobadger,nomysql,nopgx"}

var (
	// caddyBin is the Caddy binary built by TestMain.
	caddyBin string
	// repoRoot is the module root; Caddy runs with it as working directory,
	// so relative roots in Caddyfiles (the examples) resolve as in the README.
	repoRoot string
	// sharedDir holds data shared by several tests (the big tree).
	sharedDir string
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if testing.Short() {
		// Each test skips itself with the reason; nothing to build.
		return m.Run()
	}
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	repoRoot = filepath.Dir(wd)

	tmp, err := os.MkdirTemp("", "shardcache-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	sharedDir = tmp

	binEnv, name, cgo := "CADDYTEST_BIN", "caddy", "CGO_ENABLED=0"
	var extra []string
	if raceMode {
		binEnv, name, cgo = "CADDYTEST_RACE_BIN", "caddy-race", "CGO_ENABLED=1"
		extra = []string{"-race"}
	}
	if bin := os.Getenv(binEnv); bin != "" {
		// A binary built beforehand (with the flags above; with -race in
		// race mode), to iterate on the tests without rebuilding.
		caddyBin = bin
		return m.Run()
	}
	caddyBin = filepath.Join(tmp, name)
	start := time.Now()
	args := append(append([]string{"build"}, extra...), buildFlags...)
	args = append(args, "-o", caddyBin, "./cmd/caddy")
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), cgo)
	out, err := cmd.CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: building Caddy (go %s): %v\n%s", strings.Join(args, " "), err, out)
		return 1
	}
	if testing.Verbose() {
		fmt.Printf("integration: built %s (go %s, %s) in %s\n", caddyBin, strings.Join(args, " "), cgo, time.Since(start).Round(time.Millisecond))
	}
	return m.Run()
}

// needCaddy skips t in -short mode.
func needCaddy(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: it builds Caddy and runs it as a child process (several seconds); skipped with -short")
	}
	if caddyBin == "" {
		t.Fatal("the Caddy binary was not built (TestMain)")
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that no other call of this test process returned. The kernel may hand
// out a port it just gave and saw closed again, and Caddy binds its
// listeners with SO_REUSEPORT: two nodes given the same port would both
// listen on it, each answering part of the requests (seen: a director's
// admin endpoint answering for a node's).
func freePort(t *testing.T) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !portsGiven[p] {
			portsGiven[p] = true
			return p
		}
	}
	t.Fatalf("finding a free port: 1000 tries gave ports already handed out (%d so far)", len(portsGiven))
	return 0
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// globalBlock returns a Caddyfile global options block with the admin
// endpoint on admin, every site bound to 127.0.0.1 only, a short grace
// period and the extra lines given.
func globalBlock(admin string, extra ...string) string {
	var b strings.Builder
	grace := "\tgrace_period 5s\n"
	for _, l := range extra {
		if strings.HasPrefix(l, "grace_period ") {
			grace = "" // the caller's own
		}
	}
	b.WriteString("{\n\tadmin " + admin + "\n\tdefault_bind 127.0.0.1\n" + grace)
	for _, l := range extra {
		b.WriteString("\t" + l + "\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// node is one running Caddy process.
type node struct {
	t       *testing.T
	cmd     *exec.Cmd
	dir     string // the node's private temp dir
	config  string // path of the current Caddyfile
	logPath string
	admin   string // 127.0.0.1:port of the admin endpoint
	exited  chan struct{}
	waitErr error
	races   sync.Once // checkRaces, once the process has exited
}

var (
	adminRe = regexp.MustCompile(`(?m)^\s*admin\s+(127\.\d+\.\d+\.\d+:\d+)\s*$`)
	siteRe  = regexp.MustCompile(`https?://127\.\d+\.\d+\.\d+:\d+`)
)

// startCaddy writes caddyfile to a temp dir and runs `caddy run` on it. The
// Caddyfile must set its admin address (`admin 127.0.0.1:<port>` in the
// global block). startCaddy returns once the admin endpoint and every
// `http://127.0.0.1:<port>` site address in the Caddyfile answer; the process
// is stopped (by its PID) when the test ends, and its log printed if the
// test failed.
func startCaddy(t *testing.T, caddyfile string) *node {
	t.Helper()
	n := launchCaddy(t, caddyfile)
	n.waitUp(caddyfile, time.Now().Add(20*time.Second))
	return n
}

// launchCaddy writes caddyfile to a temp dir and starts `caddy run` on it
// with the extra environment variables env ("K=V"), without waiting for it
// to answer (see waitUp): several nodes start at once. The process is
// stopped by its PID when the test ends.
func launchCaddy(t *testing.T, caddyfile string, env ...string) *node {
	t.Helper()
	m := adminRe.FindStringSubmatch(caddyfile)
	if m == nil {
		t.Fatal("launchCaddy: the Caddyfile must set `admin 127.0.0.1:<port>` in its global block")
	}
	dir := t.TempDir()
	n := &node{
		t:       t,
		dir:     dir,
		config:  filepath.Join(dir, "Caddyfile"),
		logPath: filepath.Join(dir, "caddy.log"),
		admin:   m[1],
		exited:  make(chan struct{}),
	}
	if err := os.WriteFile(n.config, []byte(caddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(n.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close() // the child has its own descriptor

	n.cmd = exec.Command(caddyBin, "run", "--config", n.config, "--adapter", "caddyfile")
	n.cmd.Dir = repoRoot
	n.cmd.Env = append(caddyEnv(dir), env...)
	n.cmd.Stdout = logFile
	n.cmd.Stderr = logFile
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("starting caddy: %v", err)
	}
	go func() {
		n.waitErr = n.cmd.Wait()
		close(n.exited)
	}()
	t.Cleanup(n.stop)
	return n
}

// waitUp waits until the node's admin endpoint and every site address of
// caddyfile answer.
func (n *node) waitUp(caddyfile string, deadline time.Time) {
	n.t.Helper()
	n.waitHTTP("http://"+n.admin+"/config/", deadline)
	for _, site := range siteRe.FindAllString(caddyfile, -1) {
		n.waitHTTP(site+"/", deadline)
	}
}

// caddyEnv is the environment of a Caddy child process: the test's, with
// Caddy's data, config and home directories inside dir.
func caddyEnv(dir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME":
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"HOME="+filepath.Join(dir, "home"),
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
	)
}

// waitHTTP waits until url answers with any HTTP response.
func (n *node) waitHTTP(url string, deadline time.Time) {
	n.t.Helper()
	c := &http.Client{Timeout: time.Second, CheckRedirect: noRedirects, Transport: &http.Transport{
		// Readiness only; the tests' own clients are below.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	for {
		select {
		case <-n.exited:
			n.t.Fatalf("caddy exited before %s answered: %v\n%s", url, n.waitErr, n.logText())
		default:
		}
		resp, err := c.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s did not answer within 20s: %v\n%s", url, err, n.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopTimeout is how long stop waits after SIGTERM: longer than the 5 s
// grace period globalBlock gives Caddy by default, which Caddy may spend
// whole on a connection still open (a load generator's, left as the test
// ended) before it exits. A process that outlives it is an error.
const stopTimeout = 8 * time.Second

// stop ends the process: SIGTERM, then SIGKILL after stopTimeout, and waits
// for it.
func (n *node) stop() {
	if n.t.Failed() {
		n.t.Logf("caddy log (%s):\n%s", n.logPath, n.logText())
	}
	select {
	case <-n.exited:
		n.races.Do(n.checkRaces)
		return
	default:
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(stopTimeout):
		n.t.Errorf("caddy (pid %d) ignored SIGTERM for %s; killing it", n.cmd.Process.Pid, stopTimeout)
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
	n.races.Do(n.checkRaces)
}

// raceMarker starts a report of the race detector; raceEnd ends it.
const (
	raceMarker = "WARNING: DATA RACE"
	raceEnd    = "=================="
)

// checkRaces fails the test, in race mode, with every data race report the
// exited process wrote to its log (stderr).
func (n *node) checkRaces() {
	if !raceMode {
		return
	}
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		n.t.Errorf("race mode: reading the log of caddy (pid %d): %v", n.cmd.Process.Pid, err)
		return
	}
	reports := raceReports(string(b))
	if len(reports) == 0 {
		return
	}
	const show = 5
	var msg strings.Builder
	fmt.Fprintf(&msg, "race mode: caddy (pid %d, log %s) reported %d data race(s):\n", n.cmd.Process.Pid, n.logPath, len(reports))
	for i, r := range reports {
		if i == show {
			fmt.Fprintf(&msg, "... and %d more in the log\n", len(reports)-show)
			break
		}
		msg.WriteString(r + "\n")
	}
	n.t.Error(msg.String())
}

// raceReports returns the data race reports in log, each from its
// "WARNING: DATA RACE" line to the "==================" line that closes it
// (at most 200 lines each).
func raceReports(log string) []string {
	lines := strings.Split(log, "\n")
	var out []string
	for i := 0; i < len(lines); i++ {
		if !strings.Contains(lines[i], raceMarker) {
			continue
		}
		j := i + 1
		for ; j < len(lines) && j < i+200; j++ {
			if strings.HasPrefix(lines[j], raceEnd) || strings.Contains(lines[j], raceMarker) {
				break
			}
		}
		out = append(out, strings.Join(lines[i:j], "\n"))
		i = j - 1
	}
	return out
}

// logText returns the process's output so far (the tail, if it is long).
func (n *node) logText() string {
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const max = 64 << 10
	if len(b) > max {
		b = append([]byte("...\n"), b[len(b)-max:]...)
	}
	return string(b)
}

// logEntry is one JSON log line of Caddy's default logger.
type logEntry map[string]any

func (e logEntry) str(k string) string {
	s, _ := e[k].(string)
	return s
}

func (e logEntry) num(k string) (float64, bool) {
	f, ok := e[k].(float64)
	return f, ok
}

func (e logEntry) String() string {
	b, _ := json.Marshal(map[string]any(e))
	return string(b)
}

// logs returns the JSON log entries written so far.
func (n *node) logs() []logEntry {
	n.t.Helper()
	return readLogEntries(n.t, n.logPath)
}

func readLogEntries(t *testing.T, path string) []logEntry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []logEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var e logEntry
		if json.Unmarshal(line, &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// findLogs returns the log entries for which match is true.
func (n *node) findLogs(match func(logEntry) bool) []logEntry {
	n.t.Helper()
	var out []logEntry
	for _, e := range n.logs() {
		if match(e) {
			out = append(out, e)
		}
	}
	return out
}

// waitLog waits up to timeout for a log entry for which match is true and
// returns the first one.
func (n *node) waitLog(timeout time.Duration, what string, match func(logEntry) bool) logEntry {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if es := n.findLogs(match); len(es) > 0 {
			return es[0]
		}
		select {
		case <-n.exited:
			n.t.Fatalf("caddy exited while waiting for the log to show %s: %v", what, n.waitErr)
		default:
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("the log did not show %s within %s", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// reload replaces the node's config with caddyfile through the admin API
// (POST /load, adapted by Caddy), which returns once the new config runs.
func (n *node) reload(caddyfile string) {
	n.t.Helper()
	if err := os.WriteFile(n.config, []byte(caddyfile), 0o644); err != nil {
		n.t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+n.admin+"/load", strings.NewReader(caddyfile))
	if err != nil {
		n.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	c := &http.Client{Timeout: 20 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		n.t.Fatalf("reload: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		n.t.Fatalf("reload: %s: %s", resp.Status, body)
	}
	n.afterReload()
}

// afterReload waits, once a reload returned, until the replaced servers'
// listening sockets are closed, then drops the test client's kept-alive
// connections:
//   - Caddy binds the new servers' sockets beside the old ones
//     (SO_REUSEPORT) and closes the old ones as the old servers shut down,
//     which may be just after /load answered. Meanwhile the kernel still
//     hands new connections to an old socket; the old server, shutting
//     down, closes such a connection once it has read a request, without
//     answering (net/http's conn.serve): the client reads EOF.
//   - The old server closed its idle kept-alive connections too, and a
//     request sent on one before the client has read that close meets a
//     reset: HTTP/1.1's keep-alive race, which net/http's client does not
//     retry for every request.
//
// The tests' own requests after a reload then go on new connections to the
// new server; load generators keep their own clients and count the races.
func (n *node) afterReload() {
	start := time.Now()
	deadline := start.Add(5 * time.Second)
	for {
		dup, err := sharedListeners(n.cmd.Process.Pid)
		if err != nil {
			n.t.Logf("after the reload: %v; not waiting for the old listeners to close", err)
			break
		}
		if dup == "" {
			if waited := time.Since(start); waited > 5*time.Millisecond {
				n.t.Logf("after the reload: the old listeners closed %v after /load answered", waited.Round(time.Millisecond))
			}
			break
		}
		if time.Now().After(deadline) {
			n.t.Logf("after the reload: %s still has two listening sockets after 5 s", dup)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	client.CloseIdleConnections()
}

// sharedListeners returns an address on which process pid has more than one
// listening TCP socket ("" if none), from /proc: the inodes of the
// process's sockets, looked up in /proc/net/tcp.
func sharedListeners(pid int) (string, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return "", err
	}
	mine := make(map[string]bool, len(fds))
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
			mine[strings.TrimSuffix(ino, "]")] = true
		}
	}
	tab, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return "", err
	}
	seen := make(map[string]bool)
	for _, line := range strings.Split(string(tab), "\n")[1:] {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" || !mine[f[9]] {
			continue
		}
		if seen[f[1]] {
			return f[1], nil
		}
		seen[f[1]] = true
	}
	return "", nil
}

var goroutinesRe = regexp.MustCompile(`goroutine profile: total (\d+)`)

// goroutines returns the process's goroutine count, from the admin
// endpoint's pprof handler.
func (n *node) goroutines() int {
	n.t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + n.admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		n.t.Fatalf("goroutine profile: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	m := goroutinesRe.FindSubmatch(b)
	if m == nil {
		n.t.Fatalf("goroutine profile: unexpected answer %s: %.200s", resp.Status, b)
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v
}

// rss returns the process's resident set size in bytes.
func (n *node) rss() int64 {
	n.t.Helper()
	v, err := readRSS(n.cmd.Process.Pid)
	if err != nil {
		n.t.Fatalf("reading RSS: %v", err)
	}
	return v
}

// readRSS returns the VmRSS of pid in bytes.
func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%q: %v", line, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// runCaddy runs a one-shot caddy subcommand (adapt, validate, ...) with a
// bounded time and returns its combined output.
func runCaddy(t *testing.T, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := runCaddyTo(t, timeout, nil, &out, &out, args...)
	return out.String(), err
}

// runCaddySplit is runCaddy with stdout and stderr kept apart.
func runCaddySplit(t *testing.T, timeout time.Duration, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	return runCaddyEnv(t, timeout, nil, args...)
}

// runCaddyEnv is runCaddySplit with the extra environment variables env.
func runCaddyEnv(t *testing.T, timeout time.Duration, env []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = runCaddyTo(t, timeout, env, &o, &e, args...)
	return o.String(), e.String(), err
}

// runCaddyTo runs a one-shot caddy subcommand with the extra environment
// variables env, bounded in time, its output going to stdout and stderr.
func runCaddyTo(t *testing.T, timeout time.Duration, env []string, stdout, stderr io.Writer, args ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, caddyBin, args...)
	cmd.Dir = repoRoot
	cmd.Env = append(caddyEnv(t.TempDir()), env...)
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("caddy %s: still running after %s", strings.Join(args, " "), timeout)
	}
	return err
}

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// client is the HTTP client of the tests: bounded in time, follows no
// redirect (308s are checked), never asks for or decodes compression by
// itself. For https it trusts any certificate (the sites use `tls internal`
// on loopback) and speaks HTTP/2.
var client = &http.Client{
	Timeout:       15 * time.Second,
	CheckRedirect: noRedirects,
	Transport: &http.Transport{
		DisableCompression:  true,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     30 * time.Second,
		ForceAttemptHTTP2:   true,
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
	},
}

// response is what the tests keep of an HTTP response.
type response struct {
	proto  string
	status int
	header http.Header
	body   []byte
}

// do sends a request to base (http://host:port) for rawPath, which is sent
// as is on the request line (no cleaning, no escaping), with the headers
// given as "Name: value" strings.
func do(method, base, rawPath string, headers ...string) (*response, error) {
	req, err := http.NewRequest(method, base+"/", nil)
	if err != nil {
		return nil, err
	}
	req.URL.Opaque = rawPath
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			return nil, fmt.Errorf("bad header %q", h)
		}
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	var resp *http.Response
	if strings.HasPrefix(rawPath, "//") {
		// net/http would send this as an absolute URI with "/" + the first
		// segment as the host.
		resp, err = doRaw(req, rawPath)
	} else {
		resp, err = client.Do(req)
	}
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading body: %w", method, rawPath, err)
	}
	return &response{proto: resp.Proto, status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// mustDo is do that fails the test on a transport error.
func mustDo(t *testing.T, method, base, rawPath string, headers ...string) *response {
	t.Helper()
	r, err := do(method, base, rawPath, headers...)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, base, rawPath, err)
	}
	return r
}

// get is a plain GET.
func get(t *testing.T, base, rawPath string, headers ...string) *response {
	t.Helper()
	return mustDo(t, http.MethodGet, base, rawPath, headers...)
}

// doRaw sends req with rawPath as its request target over a new
// connection, writing the request itself.
func doRaw(req *http.Request, rawPath string) (*http.Response, error) {
	var conn net.Conn
	var err error
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	if req.URL.Scheme == "https" {
		// A config of its own: the transport adds "h2" to the NextProtos of
		// the one it is given.
		conn, err = tls.DialWithDialer(dialer, "tcp", req.URL.Host,
			&tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	} else {
		conn, err = dialer.Dial("tcp", req.URL.Host)
	}
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(client.Timeout))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", req.Method, rawPath, req.URL.Host)
	for k, vs := range req.Header {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		conn.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		conn.Close()
		return nil, err
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{resp.Body, conn}
	return resp, nil
}

// fixedTime is the modification time of every generated file, so that
// Last-Modified and If-Modified-Since are predictable.
var fixedTime = time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)

// writeTree creates files (path relative to root → content) under root, all
// with the modification time fixedTime (directories too).
func writeTree(t testing.TB, root string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	err := filepath.WalkDir(root, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Chtimes(p, fixedTime, fixedTime)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// parallel runs f(i) for i in [0, n) on n goroutines and waits.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(i)
		}()
	}
	wg.Wait()
}

// writeSparse creates a sparse file of size bytes at p (no disk blocks:
// reading it yields zeros, as fast as the kernel can zero-fill), with the
// modification time fixedTime.
func writeSparse(t *testing.T, p string, size int64) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, fixedTime, fixedTime); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond every 50ms until it is true, at most timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pollUntil polls cond every 25ms for at most timeout and reports whether it
// became true, and when.
func pollUntil(timeout time.Duration, cond func() bool) (bool, time.Duration) {
	return pollEvery(timeout, 25*time.Millisecond, cond)
}

// pollEvery polls cond every interval for at most timeout and reports
// whether it became true, and when.
func pollEvery(timeout, every time.Duration, cond func() bool) (bool, time.Duration) {
	start := time.Now()
	for {
		if cond() {
			return true, time.Since(start)
		}
		if time.Since(start) > timeout {
			return false, time.Since(start)
		}
		time.Sleep(every)
	}
}
