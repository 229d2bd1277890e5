package shardcache

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/shardcache/caddy-shardcache/cluster"
	"github.com/shardcache/caddy-shardcache/shard"
)

// fabricatedStatus is a 3-node cluster's status as n1 sees it, with a
// member whose name tries to inject a script.
func fabricatedStatus() Status {
	return Status{
		Node: "n1", SAN: "10.0.0.1:7946", Ready: false, Epoch: 42,
		Ring: []string{"n1", "n2", "<script>alert(1)</script>"},
		Members: []cluster.MemberStatus{
			{Name: "n2", Address: "10.0.0.2:7946", Up: true, Ready: true, Synced: true, SameRing: true,
				Groups: []cluster.MemberGroup{{Name: "site", Ready: true}}},
			{Name: "<script>alert(1)</script>", Address: "10.0.0.3:7946\"><b>x</b>", Up: true, Ready: false,
				Groups:        []cluster.MemberGroup{{Name: "other", Ready: false}},
				MissingGroups: []string{"site"}},
		},
		Groups: []GroupStatus{{
			Group: "site", Root: "/srv/www", Ready: false,
			Progress:    shard.Progress{Items: 150, Bytes: 3 << 20, TotalItems: 300, TotalBytes: 8 << 20, Percent: 37.5},
			PrimedItems: 150, Items: 149, PrimedBytes: 3 << 20, Memory: 3 << 20, TOCItems: 151,
			Hot: &shard.HotStats{Items: 7, Bytes: 1 << 20, Budget: 4 << 20, Hits: 9},
			Tiers: map[string]cluster.TierCount{
				"local":   {Requests: 600, Bytes: 6000},
				"hot":     {Requests: 200, Bytes: 2000},
				"peer":    {Requests: 150, Bytes: 1500},
				"storage": {Requests: 50, Bytes: 500},
			},
			PeerErrors: 3, ServedPeers: 77, ServedBytes: 12345, StorageNoTable: 5,
		}},
	}
}

func render(t *testing.T, st Status, director bool) string {
	t.Helper()
	var buf bytes.Buffer
	if err := renderStatusPage(&buf, st, director); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestStatusPageRender(t *testing.T) {
	page := render(t, fabricatedStatus(), false)
	for _, want := range []string{
		`<meta http-equiv="refresh" content="2">`,
		"node n1", "10.0.0.1:7946", "ring epoch 42",
		// members, with their state and missing groups
		"<td>n2</td>", "10.0.0.2:7946", "other (priming)",
		`<span class="no">site</span>`,
		// the group: priming progress, what it holds
		"group site", "/srv/www",
		`style="width: 37.5%"`, "150 of 300 files", "3.0MiB of 8.0MiB",
		"149 items, 3.0MiB", "table of content 151 entries",
		// hot cache: 1 MiB of a 4 MiB budget
		`style="width: 25.0%"`, "7 items, 1.0MiB of 4.0MiB",
		// tiers: local 600 of 1000 requests, storage 50
		`<td>local</td>`, `style="width: 60.0%"`, `<td>storage</td>`, `style="width: 5.0%"`,
		`<td class="n">1000</td>`,
		// counters
		`<td class="n no">3</td>`, "77 (12.1KiB)", `<td class="n">5</td>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// Tiers nearest first.
	iLocal, iHot, iPeer, iStorage := strings.Index(page, "<td>local</td>"), strings.Index(page, "<td>hot</td>"),
		strings.Index(page, "<td>peer</td>"), strings.Index(page, "<td>storage</td>")
	if !(iLocal < iHot && iHot < iPeer && iPeer < iStorage) {
		t.Errorf("tiers out of order: local %d hot %d peer %d storage %d", iLocal, iHot, iPeer, iStorage)
	}
	// Escaped: the hostile member name and address appear only escaped.
	if strings.Contains(page, "<script>") || strings.Contains(page, "<b>x</b>") {
		t.Errorf("page holds unescaped markup from a member:\n%s", page)
	}
	if !strings.Contains(page, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("page lacks the escaped member name")
	}
	// No script and no inline event handlers, nothing loaded from elsewhere.
	if regexp.MustCompile(`(?i)<script|\son[a-z]+\s*=|src=|<link`).MatchString(page) {
		t.Errorf("page has script, event handlers or external assets:\n%s", page)
	}
	if strings.Contains(page, "director") {
		t.Errorf("a content node's page says director")
	}
}

func TestStatusPageDirector(t *testing.T) {
	st := Status{Node: "front", SAN: "10.0.0.9:7946", Ready: true, Epoch: 7, Ring: []string{"n1", "n2"},
		Members: []cluster.MemberStatus{{Name: "n1", Up: true, Ready: true}, {Name: "n2", Up: false}}}
	page := render(t, st, true)
	for _, want := range []string{"node front", "<strong>director</strong>", "<td>n1</td>", "<td>n2</td>", "No path is hot enough to spread"} {
		if !strings.Contains(page, want) {
			t.Errorf("director page lacks %q", want)
		}
	}
	// A spread path: its share as a bar, the members serving it and asked.
	st.Spread = []SpreadStatus{{Path: "/hot.js", Share: 0.125, Width: 2, Members: []string{"n1", "n2"}, Asked: []string{"n2"}, Requests: 4242}}
	page = render(t, st, true)
	for _, want := range []string{"<code>/hot.js</code>", `style="width: 12.5%"`, "12.50%", "<td>n1, n2</td>", "<td>n2</td>", "4242"} {
		if !strings.Contains(page, want) {
			t.Errorf("director page with a spread path lacks %q", want)
		}
	}
	if strings.Contains(page, "No path is hot enough") {
		t.Errorf("director page with a spread path says none is spread")
	}
	if strings.Contains(page, "No groups yet") || strings.Contains(page, "<h2>Groups</h2>") {
		t.Errorf("director page shows groups")
	}
}

func TestStatusPageSingleNode(t *testing.T) {
	st := Status{Ready: true, Groups: []GroupStatus{{Root: "/srv", Ready: true,
		Progress: shard.Progress{Percent: 250}, // clamped
		Tiers:    map[string]cluster.TierCount{"local": {}, "storage": {}}}}}
	page := render(t, st, false)
	for _, want := range []string{"single node", "(unnamed group)", `style="width: 100.0%"`, `style="width: 0.0%"`} {
		if !strings.Contains(page, want) {
			t.Errorf("single-node page lacks %q", want)
		}
	}
	if strings.Contains(page, "<td>peer</td>") || strings.Contains(page, "<h2>Members</h2>") {
		t.Errorf("single-node page shows peers or members")
	}
}

// TestStatusPageRoutes registers the admin routes on a ServeMux, as Caddy's
// admin endpoint does, and checks that the page's subtree pattern leaves
// the other routes theirs.
func TestStatusPageRoutes(t *testing.T) {
	mux := http.NewServeMux()
	for _, r := range (adminAPI{}).Routes() {
		h := r.Handler
		mux.HandleFunc(r.Pattern, func(w http.ResponseWriter, req *http.Request) {
			if err := h.ServeHTTP(w, req); err != nil {
				if ae, ok := err.(caddy.APIError); ok {
					http.Error(w, ae.Err.Error(), ae.HTTPStatus)
					return
				}
				http.Error(w, err.Error(), 500)
			}
		})
	}
	do := func(method, target string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
		return rec
	}
	rec := do("GET", "/shardcache/")
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET /shardcache/: %d %q: %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	if !strings.Contains(rec.Body.String(), `http-equiv="refresh"`) {
		t.Errorf("GET /shardcache/: not the page: %s", rec.Body)
	}
	if rec := do("GET", "/shardcache"); rec.Code/100 != 3 || rec.Header().Get("Location") != "/shardcache/" {
		t.Errorf("GET /shardcache: %d Location %q, want a redirect to /shardcache/", rec.Code, rec.Header().Get("Location"))
	}
	if rec := do("GET", "/shardcache/status"); rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" {
		t.Errorf("GET /shardcache/status: %d %q, want the JSON status", rec.Code, rec.Header().Get("Content-Type"))
	}
	if rec := do("GET", "/shardcache/where"); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "missing ?path=") {
		t.Errorf("GET /shardcache/where: %d %s, want where's own 400", rec.Code, rec.Body)
	}
	if rec := do("GET", "/shardcache/purge"); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET /shardcache/purge: %d, want purge's own 405", rec.Code)
	}
	if rec := do("GET", "/shardcache/nope"); rec.Code != http.StatusNotFound {
		t.Errorf("GET /shardcache/nope: %d, want 404", rec.Code)
	}
	if rec := do("POST", "/shardcache/"); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /shardcache/: %d, want 405", rec.Code)
	}
}

func TestWherePurgeArgs(t *testing.T) {
	if p, err := wherePathArg([]string{"/a b.css"}); err != nil || p != "/a b.css" {
		t.Errorf("where /a b.css: %q %v", p, err)
	}
	if _, err := wherePathArg([]string{"css/x"}); err == nil || !strings.Contains(err.Error(), `"css/x"`) {
		t.Errorf("where css/x: %v, want an error naming it", err)
	}
	for _, c := range []struct {
		args           []string
		prefix, errHas string
		want           PurgeRequest
	}{
		{args: []string{"/x"}, want: PurgeRequest{Path: "/x"}},
		{prefix: "/img/", want: PurgeRequest{Prefix: "/img/"}},
		{args: []string{"x"}, errHas: `path "x"`},
		{prefix: "img", errHas: `--prefix "img"`},
		{args: []string{"/x"}, prefix: "/img/", errHas: `"/x"`},
		{errHas: "want a path"},
	} {
		got, err := purgeRequestArgs(c.args, c.prefix, "")
		switch {
		case c.errHas != "" && (err == nil || !strings.Contains(err.Error(), c.errHas)):
			t.Errorf("purge %q --prefix %q: err %v, want one with %q", c.args, c.prefix, err, c.errHas)
		case c.errHas == "" && (err != nil || got != c.want):
			t.Errorf("purge %q --prefix %q: %+v %v, want %+v", c.args, c.prefix, got, err, c.want)
		}
	}
}

func TestPrintWhere(t *testing.T) {
	var b bytes.Buffer
	printWhere(&b, "/big.bin", []Where{{Path: "/big.bin", Group: "site", Owner: "n2", Holders: []string{"n2", "n3"},
		Found: true, Version: "v1", Size: 3 << 20, HotChunks: 1, Chunks: 3}})
	out := b.String()
	for _, want := range []string{"OWNER", "/big.bin", "site", "n2,n3", "3.0MiB", "no (1/3 chunks hot)"} {
		if !strings.Contains(out, want) {
			t.Errorf("where table lacks %q:\n%s", want, out)
		}
	}
}

// The page served from a site (shardcache_status): browsers can open it
// there, where the admin endpoint refuses them.
func TestStatusPageHandler(t *testing.T) {
	var h StatusPage
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Sec-Fetch-Mode", "navigate") // what a browser sends
	if err := h.ServeHTTP(w, r, nil); err != nil {
		t.Fatal(err)
	}
	if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") ||
		!strings.Contains(w.Body.String(), "<html") || w.Header().Get("Content-Security-Policy") == "" {
		t.Errorf("GET: %d %q, %d bytes", w.Code, w.Header().Get("Content-Type"), w.Body.Len())
	}
	w = httptest.NewRecorder()
	err := h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/", nil), nil)
	if herr, ok := err.(caddyhttp.HandlerError); !ok || herr.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %v; want 405", err)
	}
	for input, want := range map[string]string{
		"shardcache_status extra":         "unexpected argument 'extra'",
		"shardcache_status {\n option\n}": "unexpected block (option 'option')",
	} {
		var s StatusPage
		if err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v; want %q", input, err, want)
		}
	}
	var s StatusPage
	if err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser("shardcache_status")); err != nil {
		t.Errorf("plain directive: %v", err)
	}
}
