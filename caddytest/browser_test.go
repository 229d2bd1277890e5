package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The browser test's site: a page with a stylesheet, a script, a web font,
// two images and a <video> whose source is a large file (more than two 4 MiB
// chunks) that the script seeks into, so that Chromium's media loader asks
// for it with Range requests from the middle.
const (
	browserClip       = "/media/clip.wav"
	browserClipBytes  = 10 << 20 // PCM data; the file is 44 bytes more
	browserRate       = 44100    // samples per second, mono, 16 bits
	browserSeek       = 90.0     // seconds: byte 44 + 90*88200 ≈ 7.6 MiB, in the second chunk
	browserRangeFirst = 4<<20 - 1000
	browserRangeLast  = 8<<20 + 999 // the script's own Range: three chunks
	browserChunk      = 4 << 20
)

// browserSite returns the test site and whether its font is a real one
// (the first TrueType font under /usr/share/fonts; if there is none, bytes
// that only the network checks look at).
func browserSite(t *testing.T) (clusterSite, bool) {
	t.Helper()
	r := mrand.New(mrand.NewPCG(14, 1))
	site := clusterSite{
		"index.html": []byte(fmt.Sprintf(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>shardcache in a browser</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/css/site.css">
<script src="/js/app.js" defer></script>
</head>
<body>
<h1 class="f">shardcache</h1>
<p class="f">Served from the memory of a three-node cluster through a director.</p>
<img id="png" src="/img/noise.png" width="320" height="240" alt="noise">
<img id="jpg" src="/img/photo.jpg" width="320" height="240" alt="photo">
<video id="clip" src="%s" preload="metadata" muted data-seek="%g" data-range="%d-%d"></video>
</body>
</html>
`, browserClip, browserSeek, browserRangeFirst, browserRangeLast)),
		"css/site.css": []byte(`@font-face { font-family: "TestFont"; src: url("/fonts/test.ttf") format("truetype"); }
body { margin: 2em; background: #fdfdf8; color: #222; }
.f { font-family: "TestFont", sans-serif; }
img { border: 1px solid #888; margin: 4px; }
video { width: 320px; height: 40px; }
`),
		"js/app.js": []byte(`"use strict";
// Waits for the images and the font, seeks the <video> into its second
// chunk, then fetches a Range of the same file and hashes it (FNV-1a 32),
// and leaves what it saw in window.__result for the test.
function fnv(b) {
	let h = 0x811c9dc5;
	for (let i = 0; i < b.length; i++) { h ^= b[i]; h = Math.imul(h, 0x01000193) >>> 0; }
	return h >>> 0;
}
function once(el, ok, what) {
	return new Promise((resolve, reject) => {
		const timer = setTimeout(() => reject(new Error("no " + ok + " within 30s: " + what)), 30000);
		el.addEventListener(ok, () => { clearTimeout(timer); resolve(); }, { once: true });
		el.addEventListener("error", () => { clearTimeout(timer); reject(new Error(what + ": media error " + (el.error && el.error.code) + " " + (el.error && el.error.message))); }, { once: true });
	});
}
(async () => {
	const out = {};
	try {
		const imgs = Array.from(document.images);
		await Promise.all(imgs.map((i) => i.decode()));
		out.images = imgs.map((i) => i.id + ":" + i.naturalWidth + "x" + i.naturalHeight);
		await document.fonts.ready;
		out.fonts = Array.from(document.fonts).map((f) => f.family.replace(/"/g, "") + ":" + f.status);

		const v = document.getElementById("clip");
		if (v.readyState < 1) { await once(v, "loadedmetadata", "metadata"); }
		out.duration = v.duration;
		v.currentTime = Number(v.dataset.seek);
		await once(v, "seeked", "seek");
		out.seeked = v.currentTime;
		out.readyState = v.readyState;

		const [a, b] = v.dataset.range.split("-").map(Number);
		const r = await fetch(v.currentSrc, { headers: { Range: "bytes=" + a + "-" + b }, cache: "no-store" });
		const body = new Uint8Array(await r.arrayBuffer());
		out.rangeStatus = r.status;
		out.rangeLength = body.length;
		out.rangeHash = fnv(body);
	} catch (e) {
		out.error = String(e);
	}
	window.__result = out;
})();
`),
		"img/noise.png":  browserPNG(r),
		"img/photo.jpg":  browserJPEG(r),
		"media/clip.wav": browserWAV(),
	}
	font, real := systemFont()
	if !real {
		font = make([]byte, 40<<10)
		for i := range font {
			font[i] = byte(r.Uint32())
		}
	}
	site["fonts/test.ttf"] = font
	return site, real
}

// systemFont returns the first TrueType font under /usr/share/fonts.
func systemFont() ([]byte, bool) {
	var found string
	_ = filepath.WalkDir("/usr/share/fonts", func(p string, d os.DirEntry, err error) error {
		if err != nil || found != "" {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ttf") {
			found = p
			return filepath.SkipAll
		}
		return nil
	})
	if found == "" {
		return nil, false
	}
	b, err := os.ReadFile(found)
	return b, err == nil && len(b) > 0
}

// browserPNG is a 320×240 image of random pixels (it does not compress).
func browserPNG(r *mrand.Rand) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, 320, 240))
	for i := range img.Pix {
		img.Pix[i] = byte(r.Uint32())
	}
	for i := 3; i < len(img.Pix); i += 4 {
		img.Pix[i] = 255
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// browserJPEG is a 320×240 gradient with noise.
func browserJPEG(r *mrand.Rand) []byte {
	img := image.NewRGBA(image.Rect(0, 0, 320, 240))
	for y := 0; y < 240; y++ {
		for x := 0; x < 320; x++ {
			n := byte(r.IntN(32))
			img.Set(x, y, color.RGBA{byte(x * 255 / 320), byte(y * 255 / 240), 128 + n, 255})
		}
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 90}); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// browserWAV is a PCM WAV file (16-bit mono, 44.1 kHz) of
// browserClipBytes of samples: a slowly rising tone with noise, so that no
// two chunks hold the same bytes. Every browser plays it and can seek in it
// without an index (the offset of a time is a multiplication), so a seek
// turns into a Range request at a known offset.
func browserWAV() []byte {
	b := make([]byte, 44+browserClipBytes)
	copy(b[0:], "RIFF")
	binary.LittleEndian.PutUint32(b[4:], uint32(36+browserClipBytes))
	copy(b[8:], "WAVEfmt ")
	binary.LittleEndian.PutUint32(b[16:], 16)            // fmt chunk size
	binary.LittleEndian.PutUint16(b[20:], 1)             // PCM
	binary.LittleEndian.PutUint16(b[22:], 1)             // mono
	binary.LittleEndian.PutUint32(b[24:], browserRate)   // sample rate
	binary.LittleEndian.PutUint32(b[28:], browserRate*2) // byte rate
	binary.LittleEndian.PutUint16(b[32:], 2)             // block align
	binary.LittleEndian.PutUint16(b[34:], 16)            // bits per sample
	copy(b[36:], "data")
	binary.LittleEndian.PutUint32(b[40:], browserClipBytes)
	r := mrand.New(mrand.NewPCG(14, 2))
	phase := 0.0
	for i := 0; i < browserClipBytes/2; i++ {
		f := 220 + 440*float64(i)/float64(browserClipBytes/2)
		phase += 2 * math.Pi * f / browserRate
		s := int16(2000*math.Sin(phase)) + int16(r.IntN(64)-32)
		binary.LittleEndian.PutUint16(b[44+2*i:], uint16(s))
	}
	return b
}

// browserResult is what the page's script leaves in window.__result.
type browserResult struct {
	Images      []string `json:"images"`
	Fonts       []string `json:"fonts"`
	Duration    float64  `json:"duration"`
	Seeked      float64  `json:"seeked"`
	ReadyState  int      `json:"readyState"`
	RangeStatus int      `json:"rangeStatus"`
	RangeLength int      `json:"rangeLength"`
	RangeHash   uint32   `json:"rangeHash"`
	Error       string   `json:"error"`
}

// browserNodeCaddyfile is a content node of the browser test: the
// director test's node (its `lan` advertised, X-Node on every response).
// With statusPort > 0 it also serves its status page over HTTPS there.
func browserNodeCaddyfile(c clusterNodeConfig, statusPort int) string {
	cf := globalBlock(c.admin, shardcacheOption(c.self, c.members, "{env."+clusterSecretEnv+"}",
		fmt.Sprintf("lan 127.0.0.1:%d", c.port), "fetch_timeout 2s"), "skip_install_trust", "auto_https disable_redirects") +
		clusterSiteBlock(c.port, c.root, "64MiB", "16MiB", "X-Node "+c.self.name)
	if statusPort > 0 {
		cf += fmt.Sprintf(`
https://127.0.0.1:%d {
	bind 127.0.0.1
	tls internal
	shardcache_status
}
`, statusPort)
	}
	return cf
}

// browserDirectorCaddyfile is the director of the browser test: an
// observer with an HTTPS site (`tls internal`, HTTP/1.1, 2 and 3) that
// sends the media to mediaNode (a node that does not own it, so that its
// chunks cross the SAN) and everything else to its owner
// (`lb_policy shardcache`), and a second HTTPS site with the status page.
func browserDirectorCaddyfile(admin, san string, members []clusterMember, nodePorts []int, mediaPort, port, statusPort int) string {
	return globalBlock(admin, observerOption(san, members), "skip_install_trust", "auto_https disable_redirects") +
		fmt.Sprintf(`
https://127.0.0.1:%d {
	bind 127.0.0.1
	tls internal
	handle /media/* {
		reverse_proxy 127.0.0.1:%d
	}
	handle {
		reverse_proxy %s {
			lb_policy shardcache
		}
	}
}

https://127.0.0.1:%d {
	bind 127.0.0.1
	tls internal
	shardcache_status
}
`, port, mediaPort, upstreams(nodePorts), statusPort)
}

// TestBrowser loads a page from a three-node cluster behind a director,
// over HTTPS, in headless Chromium, first over HTTP/2 and then over
// HTTP/3, and checks from the DevTools Network events that every resource
// (HTML, CSS, JS, a font, two images, a <video> seeked into a 10 MiB file
// of 4 MiB chunks that a non-owner serves, and a Range the page's script
// fetches) came over that protocol with the right status and bytes, and
// from which node. Then it renders the status pages (the shardcache_status
// directive) of the director and of n1, checks in the DOM that they show
// the members up and ready, and writes screenshots.
func TestBrowser(t *testing.T) {
	needCaddy(t)
	bin := findChromium(t)
	site, realFont := browserSite(t)

	members := ftMembers(61, 3) // SAN 127.0.61.2-4:7946
	roots := writeClusterRoots(t, members, site)
	g := newNodeGroup(t, newClusterSecret(t))
	cfgs := clusterConfigs(t, members, roots)
	var nodes []*clusterNode
	var ports []int
	n1Status := freePort(t) // n1's status page
	for i, c := range cfgs {
		sp := 0
		if i == 0 {
			sp = n1Status
		}
		nodes = append(nodes, g.launch(c.self.name, c.self.san, fmt.Sprintf("http://127.0.0.1:%d", c.port), c.root, browserNodeCaddyfile(c, sp)))
		ports = append(ports, c.port)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range nodes {
		n.waitUp(n.caddyfile, deadline)
	}
	if !waitClusterReady(t, nodes, site.paths(), len(site)) {
		return
	}

	// Who owns what; the media goes to a node that does not own it.
	owner := map[string]string{}
	for _, p := range site.paths() {
		owner[p] = nodes[0].mustWhere(t, p).Owner
	}
	mediaNode := -1
	for i, m := range members {
		if m.name != owner[browserClip] {
			mediaNode = i
			break
		}
	}
	port, statusPort := freePort(t), freePort(t)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dirSAN := "127.0.61.9:7946"
	base := fmt.Sprintf("https://127.0.0.1:%d", port)
	director := g.launch("director", dirSAN, base, "",
		browserDirectorCaddyfile(admin, dirSAN, members, ports, ports[mediaNode], port, statusPort))
	director.waitUp(director.caddyfile, time.Now().Add(30*time.Second))
	waitFor(t, 20*time.Second, "the director to see every member up and ready", func() bool {
		for _, m := range members {
			if st, ok := memberView(director, m.name); !ok || !st.Up || !st.Ready {
				return false
			}
		}
		return true
	})
	t.Logf("owners: %v; %s (%d bytes) is served by %s, which does not own it", owner, browserClip, len(site.file(browserClip)), members[mediaNode].name)
	if !realFont {
		t.Logf("no TrueType font under /usr/share/fonts: the page's font is random bytes (its network transfer is checked, not its rendering)")
	}

	for _, pc := range []struct {
		name  string
		proto string
		flags []string
	}{
		// Without QUIC the page cannot move to HTTP/3 when it sees Alt-Svc.
		{"HTTP2", "h2", []string{"disable-quic"}},
		// QUIC from the first request on for the director's origin. For
		// QUIC Chromium ignores --ignore-certificate-errors: it is told
		// the key of the director's certificate instead.
		{"HTTP3", "h3", []string{"enable-quic", fmt.Sprintf("origin-to-force-quic-on=127.0.0.1:%d", port),
			"ignore-certificate-errors-spki-list=" + spkiHash(t, fmt.Sprintf("127.0.0.1:%d", port))}},
	} {
		t.Run(pc.name, func(t *testing.T) {
			b := startBrowser(t, bin, pc.flags...)
			checkBrowserPage(t, b, base, pc.proto, site, realFont, owner, members[mediaNode].name)
		})
	}

	// The media's chunks crossed the SAN to the node that served them.
	if c := nodeCounters(t, nodes[mediaNode]); c.req["peer"] == 0 {
		t.Errorf("%s served %s without fetching a chunk from its owner (tiers %v)", members[mediaNode].name, browserClip, c.req)
	} else {
		t.Logf("%s (not the owner of %s): requests by tier %v, bytes %v", members[mediaNode].name, browserClip, c.req, c.bytes)
	}

	// The director's page lists the three members; a node's lists the
	// two others (itself is in the title) and its group's tiers, which the
	// page loads above have filled.
	t.Run("StatusPage", func(t *testing.T) {
		b := startBrowser(t, bin, "disable-quic")
		dir := artifactDir(t)
		checkStatusPage(t, b, dir, fmt.Sprintf("https://127.0.0.1:%d/", statusPort), "director", "director", members)
		checkStatusPage(t, b, dir, fmt.Sprintf("https://127.0.0.1:%d/", n1Status), "n1", members[0].name, members[1:])
	})
}

// checkBrowserPage loads base/ in b and checks every request of the page.
func checkBrowserPage(t *testing.T, b *browser, base, proto string, site clusterSite, realFont bool, owner map[string]string, mediaNode string) {
	t.Helper()
	start := time.Now()
	if _, err := browserRun(b, 30*time.Second, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("navigating to %s/: %v", base, err)
	}
	res, err := browserRun(b, 60*time.Second, chromedp.Poll[browserResult]("window.__result", chromedp.WithPollingTimeout(50*time.Second)))
	if err != nil {
		t.Fatalf("waiting for the page's script: %v", err)
	}
	elapsed := time.Since(start)
	if ok, _ := pollUntil(10*time.Second, b.settled); !ok {
		t.Errorf("requests still open 10s after the page's script ended")
	}

	// What the page's script saw.
	if res.Error != "" {
		t.Errorf("page script: %s", res.Error)
	}
	if want := []string{"png:320x240", "jpg:320x240"}; strings.Join(res.Images, " ") != strings.Join(want, " ") {
		t.Errorf("images decoded: %v; want %v", res.Images, want)
	}
	if realFont && !slices.Contains(res.Fonts, "TestFont:loaded") {
		t.Errorf("fonts: %v; want TestFont:loaded", res.Fonts)
	}
	wantDur := float64(browserClipBytes) / (2 * browserRate)
	if math.Abs(res.Duration-wantDur) > 0.1 || math.Abs(res.Seeked-browserSeek) > 0.5 {
		t.Errorf("video: duration %.2fs, at %.2fs after the seek; want %.2fs and %gs", res.Duration, res.Seeked, wantDur, browserSeek)
	}
	clip := site.file(browserClip)
	h := fnv.New32a()
	h.Write(clip[browserRangeFirst : browserRangeLast+1])
	if res.RangeStatus != 206 || res.RangeLength != browserRangeLast-browserRangeFirst+1 || res.RangeHash != h.Sum32() {
		t.Errorf("script's Range bytes=%d-%d: %d, %d bytes, FNV %08x; want 206, %d bytes, FNV %08x",
			browserRangeFirst, browserRangeLast, res.RangeStatus, res.RangeLength, res.RangeHash, browserRangeLast-browserRangeFirst+1, h.Sum32())
	}

	// What the Network events saw. Bodies first (they are the current
	// page's), then the requests.
	reqs := b.takeRequests()
	bodies := map[string][]byte{}
	for _, r := range reqs {
		if r.status == 200 && r.done {
			body, err := b.body(r.id)
			if err != nil {
				t.Errorf("%s: Network.getResponseBody: %v", r.path(), err)
			}
			bodies[r.path()] = body
		}
	}
	t.Logf("%s: page loaded and script done in %s; %d requests:\n%s", proto, elapsed.Round(time.Millisecond), len(reqs), resourceTable(reqs))

	groups := byPath(reqs)
	for _, p := range sortedPaths(groups) {
		file := site.file(p)
		if p == "/" {
			file = site.file("/index.html")
		}
		if file == nil {
			t.Errorf("unexpected request for %s (%d times)", p, len(groups[p]))
			continue
		}
		for _, r := range groups[p] {
			if r.protocol != proto {
				t.Errorf("%s [%s]: protocol %q; want %q", p, r.typ, r.protocol, proto)
			}
			fileOwner := owner[p]
			if p == "/" {
				fileOwner = owner["/index.html"]
			}
			if p == browserClip {
				fileOwner = mediaNode
			}
			if got := r.header["x-node"]; got != fileOwner {
				t.Errorf("%s [%s]: served by %q; want %s", p, r.typ, got, fileOwner)
			}
			switch r.status {
			case 200:
				if p == browserClip || !r.done || r.bytes != int64(len(file)) {
					t.Errorf("%s [%s]: 200, %d bytes (done %v, %s); want the whole file (%d bytes) finished", p, r.typ, r.bytes, r.done, r.failed, len(file))
				}
				if body, ok := bodies[p]; ok && !bytes.Equal(body, file) {
					t.Errorf("%s: the body Chromium holds (%d bytes) differs from the file (%d bytes)", p, len(body), len(file))
				}
			case 206:
				first, last, total, ok := r.contentRange()
				if p != browserClip || !ok || total != int64(len(file)) || last < first {
					t.Errorf("%s [%s]: 206 with Content-Range %q; want one of %s (%d bytes)", p, r.typ, r.header["content-range"], browserClip, len(file))
					continue
				}
				n := last - first + 1
				if r.done && r.bytes != n || !r.done && r.bytes > n {
					t.Errorf("%s [%s] %s: %d bytes received (done %v, %s); want %d", p, r.typ, r.header["content-range"], r.bytes, r.done, r.failed, n)
				}
				if !r.done && !r.canceled {
					t.Errorf("%s [%s] %s: failed: %s", p, r.typ, r.header["content-range"], r.failed)
				}
			default:
				t.Errorf("%s [%s]: status %d (failed %q)", p, r.typ, r.status, r.failed)
			}
		}
	}
	for _, p := range site.paths() {
		want := p
		if p == "/index.html" {
			want = "/"
		}
		if len(groups[want]) == 0 {
			t.Errorf("%s: never requested", want)
		}
	}
	// The media loader's seek and the script's own Range, past the first
	// chunk.
	var seekRange, scriptRange bool
	for _, r := range groups[browserClip] {
		first, last, _, ok := r.contentRange()
		if !ok || r.status != 206 {
			continue
		}
		if r.typ == "Media" && first >= browserChunk && r.bytes > 0 {
			seekRange = true
		}
		if r.typ == "Fetch" && first == browserRangeFirst && last == browserRangeLast && r.done {
			scriptRange = true
		}
	}
	if !seekRange {
		t.Errorf("no Media request of %s answered 206 from past the first %d-byte chunk with bytes (the seek)", browserClip, browserChunk)
	}
	if !scriptRange {
		t.Errorf("no finished Fetch of %s answered 206 bytes %d-%d", browserClip, browserRangeFirst, browserRangeLast)
	}
}

// checkStatusPage renders the status page at url in b, checks that its
// title names self and that its members table lists every one of members
// up and ready, and writes a screenshot (dir/status-<name>.png).
func checkStatusPage(t *testing.T, b *browser, dir, url, name, self string, members []clusterMember) {
	t.Helper()
	if _, err := browserRun(b, 30*time.Second, chromedp.Navigate(url)); err != nil {
		t.Fatalf("navigating to %s: %v", url, err)
	}
	// The rows of the table that follows the "Members" heading, as the DOM
	// has them (the page reloads itself every 2s: ask until it answers).
	const rowsJS = `(() => {
	const h = Array.from(document.querySelectorAll("h2")).find((e) => e.textContent.trim() === "Members");
	let el = h && h.nextElementSibling;
	while (el && el.tagName !== "TABLE") { el = el.nextElementSibling; }
	if (!el) { return null; }
	return Array.from(el.querySelectorAll("tr")).slice(1).map((tr) => Array.from(tr.querySelectorAll("td")).map((td) => td.textContent.trim()));
})()`
	var rows [][]string
	ok, _ := pollEvery(20*time.Second, 250*time.Millisecond, func() bool {
		got, err := browserRun(b, 5*time.Second, chromedp.Evaluate[[][]string](rowsJS))
		if err != nil {
			return false
		}
		rows = got
		for _, m := range members {
			found := false
			for _, r := range rows {
				if len(r) >= 4 && r[0] == m.name && r[2] == "yes" && r[3] == "yes" {
					found = true
				}
			}
			if !found {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Errorf("the status page's members table (DOM): %q; want %d members, each up and ready", rows, len(members))
	}
	title, err := browserRun(b, 5*time.Second, chromedp.Title())
	if err != nil || !strings.Contains(title, self) {
		t.Errorf("title %q (%v); want it to name %s", title, err, self)
	}
	shot, err := browserRun(b, 20*time.Second, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("screenshot: not a PNG: %v", err)
	}
	p := filepath.Join(dir, "status-"+name+".png")
	if err := os.WriteFile(p, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("status page %s (title %q): members table %q; screenshot %dx%d, %d bytes: %s",
		url, title, rows, img.Bounds().Dx(), img.Bounds().Dy(), len(shot), p)
}
