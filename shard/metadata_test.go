package shard

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// heapInUse is the live heap after two collections.
func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestMetadataBytesEstimate: MetadataBytes is within a third of what the
// store's records take on the heap, measured, for a node that holds every
// file and for one that holds a third; the files another node holds cost
// the latter (almost) nothing.
func TestMetadataBytesEstimate(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 20000 files")
	}
	const nFiles, nDirs = 20000, 2000
	root := t.TempDir()
	for d := range nDirs {
		if err := os.MkdirAll(filepath.Join(root, fmt.Sprintf("d%04d", d)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := range nFiles {
		// Empty files: no bodies, only metadata.
		if err := os.WriteFile(filepath.Join(root, fmt.Sprintf("d%04d/file-%06d.txt", i%nDirs, i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var perFile [2]float64
	third := func(p string) bool { return !rule(0)(p) }
	for k, own := range []func(string) bool{nil, third} {
		newWatcher = func(string) (dirWatcher, error) { return nil, errors.New("not in this test") }
		t.Cleanup(func() { newWatcher = newDirWatcher })
		before := heapInUse()
		s, err := New(Config{Root: root, Owns: own, Rescan: 1 << 40})
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		waitFor(t, 3*time.Minute, "store ready", s.Ready) // 20000 files: slow under -race on a busy machine
		used := heapInUse() - before
		est := s.MetadataBytes()
		st := s.Stats()
		perFile[k] = float64(used) / nFiles
		t.Logf("holding %d of %d files (%d items, %d dirs): %d bytes on the heap (%.0f per file of the tree), estimate %d (%.2f×)",
			s.Stats().Items, nFiles, st.Items, st.Dirs, used, perFile[k], est, float64(est)/float64(used))
		if float64(est) < 0.67*float64(used) || float64(est) > 1.5*float64(used) {
			t.Errorf("MetadataBytes = %d; the heap grew by %d", est, used)
		}
		s.Close()
	}
	// Holding a third: the per-directory cost stays, the per-file cost is a third.
	if perFile[1] > 0.6*perFile[0] {
		t.Errorf("holding a third of the files costs %.0f bytes per file of the tree; holding all %.0f", perFile[1], perFile[0])
	}
}
