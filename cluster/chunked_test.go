package cluster

import (
	"reflect"
	"testing"
)

func TestWantedSpans(t *testing.T) {
	const size = 1000
	all := []span{{0, size}}
	for _, tc := range []struct {
		hdr  string
		want []span
	}{
		{"", all},
		{"bytes=0-9", []span{{0, 10}}},
		{"bytes=990-", []span{{990, 1000}}},
		{"bytes=-100", []span{{900, 1000}}},
		{"bytes=-5000", []span{{0, 1000}}},
		{"bytes=0-9, 500-599", []span{{0, 10}, {500, 600}}},
		{"bytes=500-99999", []span{{500, 1000}}},
		{"bytes=2000-3000", nil}, // unsatisfiable: ServeContent says 416
		{"bytes=5-1", all},       // malformed: whatever ServeContent does
		{"bytes=x-1", all},
		{"items=0-1", all},
		{"bytes=1-2,3-4,5-6,7-8,9-10,11-12,13-14,15-16,17-18,19-20,21-22,23-24,25-26,27-28,29-30,31-32,33-34", all},
	} {
		if got := wantedSpans(tc.hdr, size); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("wantedSpans(%q) = %v; want %v", tc.hdr, got, tc.want)
		}
	}
	if got := wantedSpans("", 0); got != nil {
		t.Errorf("empty body: %v; want nothing", got)
	}
}

func TestChunkKeysDistinct(t *testing.T) {
	seen := map[string]bool{}
	for _, enc := range []string{"", "br", "gzip", "zstd"} {
		seen[hotKey("/a", enc)] = true
		for i := range 12 {
			k := chunkKey("/a", enc, i)
			if seen[k] {
				t.Fatalf("key %q used twice", k)
			}
			seen[k] = true
		}
	}
}
