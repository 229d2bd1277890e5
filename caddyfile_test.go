package shardcache

import (
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		input string
		want  Handler
	}{
		{`shardcache /srv/www`, Handler{Root: "/srv/www"}},
		{`shardcache {
			root /srv/www
		}`, Handler{Root: "/srv/www"}},
		{`shardcache {
			root          /srv/www
			memory        512MiB
			index         index.htm index.html
			precompressed br zstd gzip
			pass_thru
		}`, Handler{
			Root:          "/srv/www",
			Memory:        512 << 20,
			IndexNames:    []string{"index.htm", "index.html"},
			Precompressed: []string{"br", "zstd", "gzip"},
			PassThru:      true,
		}},
		{`shardcache /srv {
			memory 8GiB
		}`, Handler{Root: "/srv", Memory: 8 << 30}},
		{`shardcache /srv {
			memory 100MB
		}`, Handler{Root: "/srv", Memory: 100_000_000}},
	} {
		var got Handler
		if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
			t.Errorf("%s: unexpected error: %v", tc.input, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\ngot  %+v\nwant %+v", tc.input, got, tc.want)
		}
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	// Each mistake must name the offending token; the dispenser adds the
	// file and line ("Testfile:N").
	for input, want := range map[string]string{
		`shardcache /a /b`:                               "unexpected argument '/b'",
		"shardcache {\n root /a\n root /b\n}":            "root already specified, at Testfile:3",
		"shardcache /a {\n root /b\n}":                   "root already specified, at Testfile:2",
		"shardcache {\n root\n}":                         "root: missing directory, at Testfile:2",
		"shardcache {\n root /a /b\n}":                   "root: unexpected argument '/b'",
		"shardcache /a {\n memory lots\n}":               "memory: bad size 'lots' (want e.g. 512MiB or 8GiB), at Testfile:2",
		"shardcache /a {\n memory 0\n}":                  "memory: bad size '0'",
		"shardcache /a {\n memory\n}":                    "memory: missing size",
		"shardcache /a {\n memory 1GiB 2GiB\n}":          "memory: unexpected argument '2GiB'",
		"shardcache /a {\n index\n}":                     "index: missing file names",
		"shardcache /a {\n precompressed\n}":             "precompressed: missing encodings",
		"shardcache /a {\n precompressed br lzma\n}":     "unsupported encoding 'lzma' (supported: br, zstd, gzip), at Testfile:2",
		"shardcache /a {\n pass_thru yes\n}":             "pass_thru: unexpected argument 'yes'",
		"shardcache /a {\n\n\n rooot /b\n}":              "unrecognized subdirective 'rooot', at Testfile:4",
		"shardcache /a {\n memory 1GiB\n memory 2GiB\n}": "memory already specified, at Testfile:3",
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil {
			t.Errorf("%q: no error, want %q", input, want)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q:\ngot  %v\nwant it to contain %q", input, err, want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		h    Handler
		want string
	}{
		{Handler{}, "root is required"},
		{Handler{Root: "/a", Memory: -1}, "memory -1"},
		{Handler{Root: "/a", Precompressed: []string{"deflate"}}, `precompressed "deflate"`},
		{Handler{Root: "/a", Precompressed: []string{"br", "br"}}, `precompressed "br": listed twice`},
		{Handler{Root: "/a", IndexNames: []string{"a/b.html"}}, `index "a/b.html"`},
	} {
		err := tc.h.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error containing %q", tc.h, err, tc.want)
		}
	}
	if err := (&Handler{Root: "/a", Precompressed: []string{"br", "gzip"}}).Validate(); err != nil {
		t.Errorf("valid handler: %v", err)
	}
}

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{
		"":                "/",
		"/":               "/",
		"/a/b.css":        "/a/b.css",
		"/a/":             "/a",
		"a":               "/a",
		"/../etc/passwd":  "/etc/passwd",
		"/a/../../b":      "/b",
		"/a/./b":          "/a/b",
		"//a//b":          "/a/b",
		"/..":             "/",
		`/a\..\..\b`:      `/a\..\..\b`, // a backslash is an ordinary byte in a Linux file name
		"/.well-known/x":  "/.well-known/x",
		"/a/.hidden/../b": "/a/b",
	} {
		if got := cleanPath(in); got != want {
			t.Errorf("cleanPath(%q) = %q, want %q", in, got, want)
		}
	}
}
