package shard

import "sync/atomic"

// Stats are counters of a Store's work, each read atomically (like
// groupcache's Stats); a snapshot, not a consistent cut.
type Stats struct {
	Items         int64 // items published: Lookup answers them from memory
	Dirs          int64 // directories known
	ResidentBytes int64 // bytes of item and variant bodies held; never above Config.Memory
	PrimedItems   int64 // files read while priming
	PrimedBytes   int64 // bytes read while priming
	StorageReads  int64 // files read or opened on storage other than by priming: on-demand lookups, Open, reloads, loads after SetOwns
	StorageBytes  int64 // bytes of those files
	HandoffItems  int64 // files newly needed after SetOwns taken from Config.Handoff instead of storage
	HandoffBytes  int64 // bytes of those files
	HandoffFailed int64 // Config.Handoff answers refused (size, modification time or hash wrong), read from storage instead
	OnDemand      int64 // lookups answered from storage (not primed yet, or not ours)
	Reloads       int64 // files read again because they changed on storage
	Changes       int64 // item changes published after Ready (what OnChange is called with)
	Rescans       int64 // full rescans of the tree
	Events        int64 // file-system notifications received
	Stale         int64 // Open calls that found the file changed (ErrChanged)
	LoadErrors    int64 // files that could not be read
}

// counters are the atomic counters behind Stats.
type counters struct {
	items, dirs                atomic.Int64
	storageReads, storageBytes atomic.Int64
	onDemand, reloads, changes atomic.Int64
	rescans, events, stale     atomic.Int64
	loadErrors                 atomic.Int64
	handoffItems, handoffBytes atomic.Int64
	handoffFailed              atomic.Int64
	pathBytes                  atomic.Int64 // bytes of the paths of files and directories recorded (metadata.go)
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	return Stats{
		Items:         s.stats.items.Load(),
		Dirs:          s.stats.dirs.Load(),
		ResidentBytes: s.held.Load(),
		PrimedItems:   s.primed.items.Load(),
		PrimedBytes:   s.primed.bytes.Load(),
		StorageReads:  s.stats.storageReads.Load(),
		StorageBytes:  s.stats.storageBytes.Load(),
		HandoffItems:  s.stats.handoffItems.Load(),
		HandoffBytes:  s.stats.handoffBytes.Load(),
		HandoffFailed: s.stats.handoffFailed.Load(),
		OnDemand:      s.stats.onDemand.Load(),
		Reloads:       s.stats.reloads.Load(),
		Changes:       s.stats.changes.Load(),
		Rescans:       s.stats.rescans.Load(),
		Events:        s.stats.events.Load(),
		Stale:         s.stats.stale.Load(),
		LoadErrors:    s.stats.loadErrors.Load(),
	}
}

// Progress is how far priming has got.
type Progress struct {
	Items      int64   // files primed so far
	Bytes      int64   // bytes primed so far
	TotalItems int64   // files to prime; 0 until the walk is done
	TotalBytes int64   // bytes to prime; 0 until the walk is done
	Percent    float64 // of TotalBytes (of TotalItems if those are all empty); 100 once ready
	Ready      bool    // priming is done (see Store.Ready)
}

// progressCounters are the atomic counters behind Progress.
type progressCounters struct {
	items, bytes           atomic.Int64
	totalItems, totalBytes atomic.Int64
}

// Progress returns how far priming has got.
func (s *Store) Progress() Progress {
	p := Progress{
		Items:      s.primed.items.Load(),
		Bytes:      s.primed.bytes.Load(),
		TotalItems: s.primed.totalItems.Load(),
		TotalBytes: s.primed.totalBytes.Load(),
		Ready:      s.ready.Load(),
	}
	switch {
	case p.Ready:
		p.Percent = 100
	case p.TotalBytes > 0:
		p.Percent = min(100, 100*float64(p.Bytes)/float64(p.TotalBytes))
	case p.TotalItems > 0:
		p.Percent = min(100, 100*float64(p.Items)/float64(p.TotalItems))
	}
	return p
}
