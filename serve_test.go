package shardcache

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shardcache/caddy-shardcache/shard"
)

// The preconditions evaluated before any byte is fetched must decide what
// http.ServeContent (what file_server uses) decides with the same ETag and
// modification time: for every validator, every mtime net/http and
// file_server treat specially (0, 1), GET and HEAD.
func TestPreconditionsMatchServeContent(t *testing.T) {
	const etag = `"abc"`
	mtimes := map[string]time.Time{
		"epoch":  time.Unix(0, 0),
		"one":    time.Unix(1, 0),
		"normal": time.Date(2024, 5, 6, 7, 8, 9, 500, time.UTC),
	}
	dates := []string{
		time.Unix(0, 0).UTC().Format(http.TimeFormat),
		time.Unix(1, 0).UTC().Format(http.TimeFormat),
		time.Unix(2, 0).UTC().Format(http.TimeFormat),
		"Sat, 01 Jan 2000 00:00:00 GMT",
		"Mon, 06 May 2024 07:08:09 GMT", // the normal mtime, truncated
		"Fri, 01 Jan 2100 00:00:00 GMT",
		"not a date",
	}
	var headers []http.Header
	add := func(kv ...string) {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		headers = append(headers, h)
	}
	for _, d := range dates {
		add("If-Modified-Since", d)
		add("If-Unmodified-Since", d)
		add("If-Range", d, "Range", "bytes=0-9")
		add("If-None-Match", `"other"`, "If-Modified-Since", d)
		add("If-Match", etag, "If-Unmodified-Since", d)
	}
	for _, tag := range []string{etag, `W/"abc"`, `"other"`, "*", `"x", "abc"`, "garbage"} {
		add("If-None-Match", tag)
		add("If-Match", tag)
		add("If-Range", tag, "Range", "bytes=0-9")
	}
	add("Range", "bytes=0-9")
	add("Range", "bytes=5-1,0-2")
	body := bytes.Repeat([]byte("0123456789"), 10)
	n := 0
	for mname, mt := range mtimes {
		it := withModTime(withETag(withType(&shard.Item{Path: "/x.txt", Size: int64(len(body))}, "text/plain"), etag), mt)
		hv := headersOf(it, "", nil)
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			for _, h := range headers {
				r := httptest.NewRequest(method, "/x.txt", nil)
				r.Header = h.Clone()
				want := httptest.NewRecorder()
				want.Header().Set("Etag", etag)
				http.ServeContent(want, r, "x.txt", hv.modTime, bytes.NewReader(body))

				hdr := http.Header{"Etag": {etag}}
				status, rangeHdr := checkPreconditions(hdr, r, hv.modTime)
				what := fmt.Sprintf("mtime %s, %s %v", mname, method, h)
				switch {
				case status != 0 && status != want.Code:
					t.Errorf("%s: preconditions say %d; ServeContent %d", what, status, want.Code)
				case status == 0 && (want.Code == http.StatusNotModified || want.Code == http.StatusPreconditionFailed):
					t.Errorf("%s: preconditions say send; ServeContent %d", what, want.Code)
				case status == 0 && rangeHdr == "" && want.Code == http.StatusPartialContent:
					t.Errorf("%s: preconditions drop the Range; ServeContent sent 206", what)
				case status == 0 && rangeHdr != "" && r.Header.Get("Range") != "" && want.Code == http.StatusOK && h.Get("If-Range") != "":
					t.Errorf("%s: preconditions keep the Range; ServeContent ignored it (If-Range)", what)
				}
				n++
			}
		}
	}
	t.Logf("%d cases", n)
}

// A non-owner answering a conditional GET of another node's file whose
// mtime is 0 or 1 (not a validator): the response's Content-Length is the
// number of bytes it sends, and the status is what file_server gives.
func TestConditionalOnNonOwnerWithEpochMtime(t *testing.T) {
	for _, sec := range []int64{0, 1} {
		h, p := newHotHandler(t, 1024, time.Unix(sec, 0))
		for _, hdr := range []string{"If-Modified-Since", "If-Unmodified-Since"} {
			for _, date := range []string{"Sat, 01 Jan 2000 00:00:00 GMT", "Fri, 01 Jan 2100 00:00:00 GMT"} {
				r := httptest.NewRequest(http.MethodGet, p, nil)
				r.Header.Set(hdr, date)
				w := httptest.NewRecorder()
				if err := h.ServeHTTP(w, r, nil); err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(w.Body)
				if w.Code != http.StatusOK {
					t.Errorf("mtime %d, %s %s: status %d; want 200 (mtime is no validator)", sec, hdr, date, w.Code)
				}
				if cl := w.Header().Get("Content-Length"); cl != "" && cl != strconv.Itoa(len(got)) {
					t.Errorf("mtime %d, %s %s: Content-Length %s, %d bytes sent", sec, hdr, date, cl, len(got))
				}
				if len(got) != 1024 {
					t.Errorf("mtime %d, %s %s: %d bytes; want 1024", sec, hdr, date, len(got))
				}
			}
		}
	}
}

// A file another node holds that neither it nor this node's storage can
// supply is a 502 whose headers promise nothing: no Content-Length, ETag
// or Last-Modified of the file (Caddy writes the error response with the
// headers the handler left).
func TestBadGatewayCarriesNoItemHeaders(t *testing.T) {
	h, p := newHotHandler(t, 1024)
	h.grp.Hot().Drop(p) // no hot copy; the owner is not connected
	w := httptest.NewRecorder()
	err := h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, p, nil), nil)
	var herr interface{ Error() string }
	if err == nil {
		t.Fatal("served; want a 502")
	}
	herr = err
	if !strings.Contains(herr.Error(), "unavailable") {
		t.Errorf("error %v", err)
	}
	for _, k := range []string{"Content-Length", "Etag", "Last-Modified", "Content-Type", "Accept-Ranges"} {
		if v := w.Header().Get(k); v != "" {
			t.Errorf("the 502 carries %s: %s", k, v)
		}
	}
}

// TestHeadersOf: an item's header values in each encoding, for an item
// with precompressed variants and one without, the same on every response
// and kept nowhere; an unknown encoding gets the identity's; the Unix epoch
// is no validator.
func TestHeadersOf(t *testing.T) {
	mt := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	plain := withModTime(withETag(withType(&shard.Item{Path: "/a.txt", Size: 12345}, "text/plain"), `"p"`), mt)
	withVars := withModTime(withETag(withType(&shard.Item{Path: "/b.css", Size: 2000}, "text/css"), `"b"`), mt)
	withVars.SetVariants([]shard.Variant{{Encoding: "br", Size: 300, ETag: `"b-br"`}, {Encoding: "gzip", Size: 400, ETag: `"b-gz"`}})
	epoch := withModTime(withETag(&shard.Item{Path: "/c", Size: 7}, `"c"`), time.Unix(0, 0))
	lm := mt.Format(http.TimeFormat)
	for _, c := range []struct {
		it   *shard.Item
		enc  string
		want itemHeaders
	}{
		{plain, "", itemHeaders{`"p"`, "text/plain", "12345", lm, 12345, mt}},
		{plain, "gzip", itemHeaders{`"p"`, "text/plain", "12345", lm, 12345, mt}},
		{withVars, "", itemHeaders{`"b"`, "text/css", "2000", lm, 2000, mt}},
		{withVars, "br", itemHeaders{`"b-br"`, "text/css", "300", lm, 300, mt}},
		{withVars, "gzip", itemHeaders{`"b-gz"`, "text/css", "400", lm, 400, mt}},
		{withVars, "zstd", itemHeaders{`"b"`, "text/css", "2000", lm, 2000, mt}},
		{epoch, "", itemHeaders{`"c"`, "", "7", "", 7, time.Time{}}},
	} {
		for round := range 2 {
			text := make([]byte, 0, textLen)
			got := headersOf(c.it, c.enc, text)
			// The same instant, whatever its location (an Item's ModTime
			// is in the local time zone, as os.FileInfo's).
			if got.modTime.Equal(c.want.modTime) {
				got.modTime = c.want.modTime
			}
			if got != c.want {
				t.Errorf("headersOf(%s, %q), round %d = %+v; want %+v", c.it.Path, c.enc, round, got, c.want)
			}
		}
	}
}

// withETag sets it's ETag (shard.Item.SetETag) and returns it.
func withType(it *shard.Item, t string) *shard.Item {
	it.SetContentType(t)
	return it
}

func withETag(it *shard.Item, etag string) *shard.Item {
	it.SetETag(etag)
	return it
}

// withModTime sets it's ModTime (shard.Item.SetModTime) and returns it.
func withModTime(it *shard.Item, t time.Time) *shard.Item {
	it.SetModTime(t)
	return it
}

// An item without an ETag (one from elsewhere that came with none) gets no
// Etag header, not an empty one; an item with one gets it.
func TestPrepareETagHeader(t *testing.T) {
	for _, c := range []struct {
		etag string
		want []string
	}{
		{"", nil},
		{`"0123456789abcdef0011223344556677"`, []string{`"0123456789abcdef0011223344556677"`}},
		{`"v1"`, []string{`"v1"`}},
	} {
		it := withETag(&shard.Item{Path: "/x", Size: 3}, c.etag)
		w := httptest.NewRecorder()
		var resp response
		prepare(&resp, w, httptest.NewRequest(http.MethodGet, "/x", nil), it, "")
		if got := w.Header()["Etag"]; !slices.Equal(got, c.want) {
			t.Errorf("ETag %q: header %q; want %q", c.etag, got, c.want)
		}
	}
}

// appendHTTPDate writes what AppendFormat(http.TimeFormat) writes, in UTC,
// for any time: a sweep of a few thousand, edges and zones.
func TestAppendHTTPDate(t *testing.T) {
	times := []time.Time{
		{}, time.Unix(0, 0), time.Unix(1, 0), time.Now(),
		time.Date(999, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2024, 2, 29, 12, 0, 0, 0, time.FixedZone("x", -7*3600)),
		time.Date(2000, 3, 1, 0, 30, 0, 0, time.FixedZone("y", 5*3600+1800)),
	}
	for s := int64(-5e9); s < 8e9; s += 3_700_021 {
		times = append(times, time.Unix(s, 0))
	}
	for _, tm := range times {
		want := tm.UTC().Format(http.TimeFormat)
		if got := string(appendHTTPDate([]byte("x"), tm)); got != "x"+want {
			t.Errorf("%v: %q; want %q", tm, got, "x"+want)
		}
	}
}
