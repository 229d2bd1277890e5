package cluster

import (
	"testing"

	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

// benchGroup is a group of node n1 that learned n files n2 holds.
func benchGroup(b *testing.B, n int) (*Group, []string) {
	m := NewMembership("n1", false, []peering.Peer{{Name: "n2", Addr: "x"}}, 1)
	c := New(Config{Name: "n1"}, m)
	g := c.Group("www")
	var paths []string
	var ms []peering.Meta
	for i := 0; len(paths) < n; i++ {
		meta := genMeta(i)
		if m.Owner(meta.Path) != "n2" {
			continue
		}
		paths = append(paths, meta.Path)
		ms = append(ms, meta)
	}
	g.Learn("n2", peering.Delta{Group: "www", Upserts: ms})
	return g, paths
}

// BenchmarkResolveRemote: resolving a file another node holds, the same
// one again and again (a hot file), and each of 100k files in turn (most
// not in the item cache).
func BenchmarkResolveRemote(b *testing.B) {
	g, paths := benchGroup(b, 100_000)
	st, err := shard.New(shard.Config{Root: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	b.Run("same", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if res, err := g.Resolve(st, paths[7]); err != nil || res.Remote == nil {
				b.Fatal(res, err)
			}
		}
	})
	b.Run("all", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if res, err := g.Resolve(st, paths[i]); err != nil || res.Remote == nil {
				b.Fatal(res, err)
			}
			if i++; i == len(paths) {
				i = 0
			}
		}
	})
}
