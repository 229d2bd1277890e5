package shardcache

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"

	"github.com/shardcache/caddy-shardcache/shard"
	"go.uber.org/zap"
)

// The Go runtime's soft memory limit follows what the stores and hot caches
// actually hold, and the metadata that describes it, unless the operator set
// GOMEMLIMIT.
//
// Without a limit the collector lets the heap grow to twice what is live,
// and what is live is mostly primed bytes: the resident set would reach
// about twice them. A limit derived from the budgets is no better when the
// site is smaller than its budget (a 200 MiB site under `memory 2GiB`
// reached 609 MiB of RSS once warm). So while any store is priming (which
// allocates fast), the limit is 1.1 × the budgets + the metadata +
// memoryOverhead; once every store is ready, it is 1.1 × (the bytes held +
// the metadata) + memoryOverhead, and never less than the live heap +
// minHeadroom (a heap that cannot fit under the limit would make the
// collector run without pause). The metadata is what the stores estimate
// their records of files, items and directories take
// (shard.Store.MetadataBytes), plus whatever else the running config
// reports through metadataSized (see metadataOf): with millions of files
// it is hundreds of MiB, and a limit blind to it keeps the collector
// running almost continuously. It is re-read
// every second, so it follows the hot caches as they fill and files as they
// change. Once every store has become ready, the limit comes down to its
// primed value a step a second (stepDown; with arenas, from half a minute
// later: settleAfter), and the runtime returns priming's garbage to the
// operating system as it does.
//
// Where the bytes held live in arenas outside the Go heap (Linux, see
// shard/arena.go), they are left out: the held bytes and budgets above
// count as zero, so the limit is 1.1 × the metadata + memoryOverhead, and
// never less than 1.5 × the live heap (2 × while priming).
//
// The limit is soft: the runtime never fails an allocation for it.

// memoryOverhead is what the process may use beyond 1.1 × the bytes held
// and the metadata before the Go runtime collects harder: Caddy itself, and
// the garbage of requests and storage reads.
const memoryOverhead = 64 << 20

// minHeadroom is the least room for garbage above the live heap.
const minHeadroom = 32 << 20

// memoryLimit is the limit for a process whose stores and hot caches hold
// held bytes described by meta bytes of metadata, with a live heap of live
// bytes.
func memoryLimit(held, meta, live int64) int64 {
	kept := held + meta
	return max(kept+kept/10+memoryOverhead, live+minHeadroom)
}

// primingLimit is the limit while stores with these budgets prime, with
// meta bytes of metadata so far.
func primingLimit(budgets, meta int64) int64 {
	return budgets + budgets/10 + meta + meta/10 + memoryOverhead
}

// arenaLimit is limit raised, for a process whose bodies live in arenas,
// to leave room for garbage above a live heap of live bytes: half of it
// once primed, as much again while priming (see governMemory).
func arenaLimit(limit, live int64, primed bool) int64 {
	if primed {
		return max(limit, live+live/2)
	}
	return max(limit, 2*live)
}

// settleAfter is how long priming's room for garbage stays once every store
// is ready, where bodies live in arenas (see governMemory).
const settleAfter = 30 * time.Second

// readiness follows, tick by tick, whether every store is ready, and since
// when.
type readiness struct {
	primedAt time.Time // when every store was last found ready; zero while one primes
	settled  bool      // every store has been ready for settleAfter
}

// update records whether every store is ready at now, and reports whether
// they just became so (again, after a new store primed).
func (r *readiness) update(ready bool, now time.Time) (justPrimed bool) {
	if !ready {
		*r = readiness{}
		return false
	}
	if r.primedAt.IsZero() {
		r.primedAt = now
		justPrimed = true
	}
	r.settled = r.settled || now.Sub(r.primedAt) >= settleAfter
	return justPrimed
}

// limitStep is how far below the memory the runtime holds (mapped and not
// returned to the OS) the limit may be set at one tick of the governor
// (a second). The pages above a lower limit are returned by the next
// allocation that needs a span, at once and without being preempted:
// after priming a million files, a limit set 1 GB below them stalled the
// node for about a second, longer than its peers' idle timeout. A step at
// a time they go back in pieces of a tenth of a second or less.
const limitStep = 128 << 20

// stepDown is limit, raised if need be to limitStep below mapped, the
// memory the runtime holds, and to minHeadroom above inUse, the heap's
// objects live or not yet swept. Below the heap in use, the limit would
// start a collection whose goal is already passed: every goroutine that
// allocates would help mark the whole metadata until it ends. Above it, the
// collector's own pacing finds priming's garbage, and the limit follows the
// heap down a tick after.
func stepDown(limit, mapped, inUse int64) int64 {
	return max(limit, mapped-limitStep, inUse+minHeadroom)
}

// metadataSized is what reports the Go heap its metadata takes, besides
// the bytes it holds: every *shard.Store, and whatever else metadataOf
// finds.
type metadataSized interface {
	MetadataBytes() int64
}

// metadataOf returns what holds metadata in the running config: each store
// once, and the cluster's tables of content.
//
// The cluster's share is its tables of content (Cluster.MetadataBytes):
// per file another node holds, a slot of the compact table.
func metadataOf(sources []source, c *clusterRef) []metadataSized {
	out := make([]metadataSized, 0, len(sources)+1)
	seen := make(map[*shard.Store]bool, len(sources))
	for _, s := range sources {
		if s.store != nil && !seen[s.store] {
			seen[s.store] = true
			out = append(out, s.store)
		}
	}
	if c != nil && c.Cluster != nil {
		out = append(out, c.Cluster)
	}
	return out
}

// metadataBytes sums what ms report.
func metadataBytes(ms []metadataSized) int64 {
	var n int64
	for _, m := range ms {
		n += m.MetadataBytes()
	}
	return n
}

// setMemoryLimit sets the priming limit for stores with these budgets,
// unless the operator set GOMEMLIMIT.
func setMemoryLimit(budgets int64, log *zap.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit := primingLimit(budgets, 0)
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
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
	var last int64
	var rd readiness
	for now := range time.Tick(time.Second) {
		sources, c := reg.get()
		if len(sources) == 0 {
			continue
		}
		var held, budgets int64
		ready := true
		seenStore := map[*shard.Store]bool{}
		seenHot := map[*shard.Hot]bool{}
		for _, s := range sources {
			if !seenStore[s.store] { // two sites may share a store
				seenStore[s.store] = true
				held += s.store.Stats().ResidentBytes
			}
			budgets += s.budget
			if s.grp != nil {
				if h := s.grp.Hot(); h != nil && !seenHot[h] {
					seenHot[h] = true
					held += h.Stats().Bytes
				}
			}
			ready = ready && s.store.Ready()
		}
		arenas := shard.Arenas().Enabled
		if arenas {
			// The bytes held live in arenas outside the Go heap
			// (shard/arena.go): the limit bounds the metadata and the
			// requests' garbage only.
			held, budgets = 0, 0
		}
		meta := metadataBytes(metadataOf(sources, c))
		// Once every store is ready the limit comes down no faster than
		// the heap in use and the memory held allow (stepDown), and the
		// collector's pacing finds priming's garbage: no collection is
		// forced. With arenas, priming's room for garbage (as much as the
		// live heap) stays for settleAfter.
		//
		// As a store becomes ready its whole table of content streams to
		// every peer, and the peers' tables stream in as they become
		// ready: a burst of allocation. Under the primed limit (half the
		// room for garbage, and at most minHeadroom above the heap
		// in use) nodes of 1M files went silent for over a second just
		// after becoming ready, while their peers were still priming on
		// the same CPUs: longer than the peers' idle timeout, so they
		// took them for down (bench/scale.sh, "peers seen down while
		// starting": a reconnect in most runs, none with the governor
		// off). A forced collection at ready (runtime.GC) did the same,
		// and debug.FreeOSMemory after it stalled a node 1.4-2 s.
		justPrimed := rd.update(ready, now)
		settled := rd.settled
		metrics.Read(samples)
		liveHeap := int64(samples[0].Value.Uint64())
		limit := max(primingLimit(budgets, meta), liveHeap+minHeadroom)
		if ready {
			limit = memoryLimit(held, meta, liveHeap)
		}
		if arenas {
			// The heap is metadata and garbage: room for half the live
			// heap in garbage, or the collector runs at every rescan's
			// and priming's few MiB (bench/scale.sh, 1M files: 20 s of
			// CPU per idle minute and priming twice as slow with only
			// minHeadroom). While priming, room for as much garbage as
			// the live heap, as the collector's own pacing (GOGC=100)
			// allows: priming a million files on three nodes took 74-76 s
			// with half (the collector 13% of a node's CPU), 66-67 s
			// with the runtime's default pacing.
			limit = arenaLimit(limit, liveHeap, settled)
		}
		mapped := int64(samples[1].Value.Uint64() - samples[2].Value.Uint64()) // not returned to the OS
		limit = stepDown(limit, mapped, int64(samples[3].Value.Uint64()))
		if d := limit - last; d > 1<<20 || d < -1<<20 {
			debug.SetMemoryLimit(limit)
			last = limit
			log.Debug("Go memory limit", zap.Int64("held", held), zap.Int64("metadata", meta),
				zap.Int64("limit", limit), zap.Bool("ready", ready), zap.Bool("settled", settled))
		}
		if justPrimed {
			log.Info("primed: the Go memory limit now follows the bytes held and their metadata",
				zap.Int64("held", held), zap.Int64("metadata", meta), zap.Int64("limit", limit),
				zap.Int64("live_heap", liveHeap))
		}
	}
}
