package shardcache

import (
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestDirectorUnmarshalCaddyfile(t *testing.T) {
	for in, want := range map[string]Director{
		"shardcache":                                   {},
		"shardcache idx.htm":                           {Index: "idx.htm"},
		"shardcache {\n\tspread off\n}":                {NoSpread: true},
		"shardcache {\n\tspread on\n\tindex a.html\n}": {Index: "a.html"},
		"shardcache b.html {\n\tspread off\n}":         {Index: "b.html", NoSpread: true},
	} {
		var d Director
		if err := d.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if d.Index != want.Index || d.NoSpread != want.NoSpread {
			t.Errorf("%q: %+v; want %+v", in, d, want)
		}
	}
	for _, in := range []string{
		"shardcache a b",
		"shardcache {\n\tspread maybe\n}",
		"shardcache {\n\tspread\n}",
		"shardcache {\n\tspread off extra\n}",
		"shardcache {\n\tcolour blue\n}",
	} {
		var d Director
		if err := d.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}
