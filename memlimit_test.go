package shardcache

import "testing"

func TestMemoryLimit(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct{ held, live, want int64 }{
		{0, 10 * mib, 64 * mib},                      // an empty site: the overhead
		{200 * mib, 240 * mib, 284 * mib},            // 1.1 × held + 64 MiB
		{200 * mib, 300 * mib, 332 * mib},            // more live heap than that: room above it
		{1 << 30, 1100 * mib, 1126*mib + 64*mib + 1}, // rounding: 1.1 × 1 GiB = 1126.4 MiB
	} {
		got := memoryLimit(tc.held, tc.live)
		if d := got - tc.want; d < -mib || d > mib {
			t.Errorf("memoryLimit(%d MiB, %d MiB) = %.1f MiB; want %.1f MiB", tc.held/mib, tc.live/mib, float64(got)/mib, float64(tc.want)/mib)
		}
	}
}
