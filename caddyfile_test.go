package shardcache

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
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
		"shardcache {\n memory 1GiB\n}":                  "shardcache: missing root",
		"shardcache {\n hot lots\n}":                     "hot: bad size 'lots'",
		"shardcache {\n group\n}":                        "group: missing name",
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

func TestUnmarshalGlobalOption(t *testing.T) {
	input := `shardcache {
		node   n1 127.0.0.2:7946
		peer   n2 127.0.0.3:7946
		peer   n3 127.0.0.4:7946
		secret {env.SHARDCACHE_SECRET}
		fetch_timeout 500ms
	}`
	var a App
	if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
		t.Fatal(err)
	}
	if a.Node == nil || *a.Node != (Member{"n1", "127.0.0.2:7946"}) {
		t.Errorf("node = %+v", a.Node)
	}
	if want := []Member{{"n2", "127.0.0.3:7946"}, {"n3", "127.0.0.4:7946"}}; !reflect.DeepEqual(a.Peers, want) {
		t.Errorf("peers = %+v, want %+v", a.Peers, want)
	}
	if a.Secret != "{env.SHARDCACHE_SECRET}" || a.FetchTimeout != caddy.Duration(500*time.Millisecond) {
		t.Errorf("secret %q, fetch_timeout %v", a.Secret, a.FetchTimeout)
	}

	var b App
	if err := b.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`shardcache {
		node n1 10.0.0.1:7946
		tls  /c.pem /k.pem /ca.pem
	}`)); err != nil {
		t.Fatal(err)
	}
	if b.TLS == nil || *b.TLS != (TLSFiles{"/c.pem", "/k.pem", "/ca.pem"}) {
		t.Errorf("tls = %+v", b.TLS)
	}
}

func TestUnmarshalGlobalOptionErrors(t *testing.T) {
	for input, want := range map[string]string{
		"shardcache {\n node n1\n secret 0123456789abcdef\n}":           "node: want <name> <san_host:port>, got 1 arguments, at Testfile:2",
		"shardcache {\n node n1 a:1\n node n2 b:1\n}":                   "node already specified, at Testfile:3",
		"shardcache {\n peer n2 b:1\n secret 0123456789abcdef\n}":       "missing `node",
		"shardcache {\n node n1 a:1\n}":                                 "missing `secret <value>` or `tls",
		"shardcache {\n node n1 a:1\n secret x\n tls a b c\n}":          "either secret or tls",
		"shardcache {\n node n1 a:1\n tls a b\n}":                       "tls: want <cert_file> <key_file> <ca_file>, got 2 arguments, at Testfile:3",
		"shardcache {\n node n1 a:1\n secret s\n fetch_timeout soon\n}": "fetch_timeout: bad duration 'soon', at Testfile:4",
		"shardcache {\n node n1 a:1\n secret s\n\n replicas 2x\n}":      "replicas: bad count '2x' (want 1 or more), at Testfile:5",
		"shardcache {\n node n1 a:1\n secret s\n\n replica 2\n}":        "unrecognized shardcache option 'replica', at Testfile:5",
		"shardcache on {\n}":                                            "unexpected argument 'on'",
	} {
		var a App
		err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q:\ngot  %v\nwant it to contain %q", input, err, want)
		}
	}
}

func TestAppValidate(t *testing.T) {
	base := func() App {
		return App{Node: &Member{"n1", "127.0.0.2:7946"}, Peers: []Member{{"n2", "127.0.0.3:7946"}}, Secret: "x"}
	}
	for _, tc := range []struct {
		mod  func(*App)
		want string
	}{
		{func(a *App) { a.Node.Name = "n_1" }, `node "n_1": a node name is a DNS label`},
		{func(a *App) { a.Peers[0].Name = "n1" }, "peer n1: name already used by node"},
		{func(a *App) { a.Peers[0].Address = "127.0.0.3" }, `peer n2: bad address "127.0.0.3"`},
		{func(a *App) { a.Secret = "" }, "needs `secret <value>` or `tls"},
		{func(a *App) { a.Replicas = 3 }, "replicas 3: want 1 to 2"},
	} {
		a := base()
		tc.mod(&a)
		if err := a.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error containing %q", err, tc.want)
		}
	}
	a := base()
	if err := a.validate(); err != nil {
		t.Errorf("valid app: %v", err)
	}
}

func TestUnmarshalPeerSources(t *testing.T) {
	input := `shardcache {
		node n1 10.0.0.1:7946
		peer n2 10.0.0.2:7946
		peers srv _shardcache._udp.www.default.svc.cluster.local {
			refresh 5s
			resolvers 10.96.0.10:53 10.96.0.11
			grace 30s
		}
		peers dns www.default.svc.cluster.local 7946
		secret {env.SHARDCACHE_SECRET}
	}`
	var a App
	if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
		t.Fatal(err)
	}
	want := []PeerSource{
		{Kind: "srv", Name: "_shardcache._udp.www.default.svc.cluster.local", Refresh: caddy.Duration(5 * time.Second),
			Resolvers: []string{"10.96.0.10:53", "10.96.0.11"}, Grace: caddy.Duration(30 * time.Second)},
		{Kind: "dns", Name: "www.default.svc.cluster.local", Port: 7946},
	}
	if !reflect.DeepEqual(a.PeerSources, want) {
		t.Errorf("got  %+v\nwant %+v", a.PeerSources, want)
	}
	for input, want := range map[string]string{
		"shardcache {\n node n1 1.2.3.4:5\n peers\n}":                           "peers: missing kind",
		"shardcache {\n node n1 1.2.3.4:5\n peers mdns x\n}":                    "unknown kind 'mdns'",
		"shardcache {\n node n1 1.2.3.4:5\n peers srv\n}":                       "peers srv: missing name",
		"shardcache {\n node n1 1.2.3.4:5\n peers dns x\n}":                     "peers dns x: missing port",
		"shardcache {\n node n1 1.2.3.4:5\n peers dns x 0\n}":                   "bad port '0'",
		"shardcache {\n node n1 1.2.3.4:5\n peers srv x y\n}":                   "unexpected argument 'y'",
		"shardcache {\n node n1 1.2.3.4:5\n peers srv x {\n refresh soon\n}\n}": "refresh: bad duration 'soon'",
		"shardcache {\n node n1 1.2.3.4:5\n peers srv x {\n ttl 5s\n}\n}":       "unrecognized option 'ttl'",
		"shardcache {\n node n1 1.2.3.4:5\n peers srv x {\n resolvers\n}\n}":    "resolvers: missing address",
	} {
		var a App
		err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v; want one containing %q", input, err, want)
		}
	}
}
