package shardcache

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"

	"go.uber.org/zap"
)

// The Go runtime's soft memory limit follows what the stores and hot caches
// actually hold, unless the operator set GOMEMLIMIT.
//
// Without a limit the collector lets the heap grow to twice what is live,
// and what is live is mostly primed bytes: the resident set would reach
// about twice them. A limit derived from the budgets is no better when the
// site is smaller than its budget (a 200 MiB site under `memory 2GiB`
// reached 609 MiB of RSS once warm). So while any store is priming (which
// allocates fast), the limit is 1.1 × the budgets + memoryOverhead; once
// every store is ready, it is 1.1 × the bytes held + memoryOverhead, and
// never less than the live heap + minHeadroom (a heap that cannot fit under
// the limit would make the collector run without pause). It is re-read
// every second, so it follows the hot caches as they fill and files as they
// change. When every store has become ready, the garbage of priming is
// returned to the operating system once.
//
// The limit is soft: the runtime never fails an allocation for it.

// memoryOverhead is what the process may use beyond 1.1 × the bytes held
// before the Go runtime collects harder: Caddy itself, the items' metadata,
// and the garbage of requests and storage reads.
const memoryOverhead = 64 << 20

// minHeadroom is the least room for garbage above the live heap.
const minHeadroom = 32 << 20

// memoryLimit is the limit for a process whose stores and hot caches hold
// held bytes, with a live heap of live bytes.
func memoryLimit(held, live int64) int64 {
	return max(held+held/10+memoryOverhead, live+minHeadroom)
}

// primingLimit is the limit while stores with these budgets prime.
func primingLimit(budgets int64) int64 {
	return budgets + budgets/10 + memoryOverhead
}

// setMemoryLimit sets the priming limit for stores with these budgets,
// unless the operator set GOMEMLIMIT.
func setMemoryLimit(budgets int64, log *zap.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit := primingLimit(budgets)
	debug.SetMemoryLimit(limit)
	log.Info("set the Go memory limit for priming; once primed it follows the bytes held (set GOMEMLIMIT to choose another)",
		zap.Int64("budgets", budgets), zap.Int64("limit", limit))
}

var governor sync.Once

// startMemoryGovernor starts, once per process, the loop that keeps the
// limit at memoryLimit of what the current config's stores hold.
func startMemoryGovernor(log *zap.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	governor.Do(func() { go governMemory(log) })
}

func governMemory(log *zap.Logger) {
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	var last int64
	freed := false
	for range time.Tick(time.Second) {
		sources, _ := reg.get()
		if len(sources) == 0 {
			continue
		}
		var held, budgets int64
		ready := true
		for _, s := range sources {
			held += s.store.Stats().ResidentBytes
			budgets += s.budget
			if s.grp != nil {
				if h := s.grp.Hot(); h != nil {
					held += h.Stats().Bytes
				}
			}
			ready = ready && s.store.Ready()
		}
		limit := primingLimit(budgets)
		if ready {
			metrics.Read(live)
			limit = memoryLimit(held, int64(live[0].Value.Uint64()))
		}
		if d := limit - last; d > 1<<20 || d < -1<<20 {
			debug.SetMemoryLimit(limit)
			last = limit
			log.Debug("Go memory limit", zap.Int64("held", held), zap.Int64("limit", limit), zap.Bool("primed", ready))
		}
		if ready && !freed {
			freed = true
			debug.FreeOSMemory()
			log.Info("primed: the Go memory limit now follows the bytes held; returned priming's garbage to the OS",
				zap.Int64("held", held), zap.Int64("limit", limit))
		}
	}
}
