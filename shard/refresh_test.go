package shard

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRefreshRereadsUnchangedLooking(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "a", "x.txt")
	if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f, []byte("old!"), 0o644); err != nil {
		t.Fatal(err)
	}
	mtime := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := os.Chtimes(f, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	// Rescans are made rare; the watcher sees the write but, as size and
	// modification time stay the same, keeps the old bytes: only Refresh
	// can explain new ones.
	s, err := New(Config{Root: dir, Rescan: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	startReady(t, s)
	old, _, err := s.Lookup("/a/x.txt")
	if err != nil {
		t.Fatal(err)
	}
	// Same size, same mtime, other bytes: looks unchanged.
	if err := os.WriteFile(f, []byte("new!"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(f, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if n := s.Refresh("/a/", true); n != 1 {
		t.Fatalf("Refresh looked at %d paths, want 1", n)
	}
	it, _, err := s.Lookup("/a/x.txt")
	if err != nil {
		t.Fatal(err)
	}
	if string(it.Body()) != "new!" || SameVersion(it, old) {
		t.Fatalf("after Refresh: body %q etag %s (old %s)", it.Body(), it.ETag(), old.ETag())
	}
	if n := s.Refresh("/nope", false); n != 1 {
		t.Fatalf("Refresh of one path looked at %d", n)
	}
}
