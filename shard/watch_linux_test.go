//go:build linux

package shard

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// watchRecorder runs a watcher and records what it reports.
type watchRecorder struct {
	mu        sync.Mutex
	events    map[string]string // store path → "c" (create), "w" (write), "-" (other), concatenated
	overflows int
	fails     []error
	done      chan struct{}
}

func runWatcher(t *testing.T, w dirWatcher) *watchRecorder {
	t.Helper()
	r := &watchRecorder{events: map[string]string{}, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		w.run(func(p string, create, write bool) {
			r.mu.Lock()
			defer r.mu.Unlock()
			switch {
			case create:
				r.events[p] += "c"
			case write:
				r.events[p] += "w"
			default:
				r.events[p] += "-"
			}
		}, func() {
			r.mu.Lock()
			r.overflows++
			r.mu.Unlock()
		}, func(err error) {
			r.mu.Lock()
			r.fails = append(r.fails, err)
			r.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		w.close()
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			t.Error("run did not return after close")
		}
	})
	return r
}

// wait waits (at most 5 s) until p's events contain want.
func (r *watchRecorder) wait(t *testing.T, p, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		got := r.events[p]
		r.mu.Unlock()
		if strings.Contains(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("events at %s: %q, want %q in them", p, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (r *watchRecorder) has(p string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.events[p]
	return ok
}

// TestInotify: events come under store paths (the root's and a
// subdirectory's); a directory renamed and watched under its new path
// reports there, and removing the old path's watch keeps it; a directory
// removed leaves the list; close ends run; a watch limit's error is ENOSPC.
func TestInotify(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(root, "a"), 0o755))
	w, err := newDirWatcher(root)
	must(err)
	rec := runWatcher(t, w)
	if _, err := w.add("/", root); err != nil {
		t.Fatal(err)
	}
	wdA, err := w.add("/a", filepath.Join(root, "a"))
	must(err)

	must(os.WriteFile(filepath.Join(root, "top.txt"), []byte("x"), 0o644))
	rec.wait(t, "/top.txt", "c")
	rec.wait(t, "/top.txt", "w")
	must(os.WriteFile(filepath.Join(root, "a", "f.txt"), []byte("x"), 0o644))
	rec.wait(t, "/a/f.txt", "c")
	must(os.Chmod(filepath.Join(root, "a", "f.txt"), 0o600))
	rec.wait(t, "/a/f.txt", "-")
	must(os.Rename(filepath.Join(root, "top.txt"), filepath.Join(root, "a", "moved.txt")))
	rec.wait(t, "/top.txt", "-")     // moved out
	rec.wait(t, "/a/moved.txt", "c") // moved in: a creation

	// Renamed: the same directory, the same descriptor, the new path.
	must(os.Rename(filepath.Join(root, "a"), filepath.Join(root, "b")))
	rec.wait(t, "/b", "c")
	wdB, err := w.add("/b", filepath.Join(root, "b"))
	must(err)
	if wdB != wdA {
		t.Errorf("descriptor of the renamed directory: %d, want %d", wdB, wdA)
	}
	w.remove("/a", filepath.Join(root, "a"), wdA) // the old path's record goes: the watch stays
	must(os.WriteFile(filepath.Join(root, "b", "g.txt"), []byte("x"), 0o644))
	rec.wait(t, "/b/g.txt", "c")
	if rec.has("/a/g.txt") {
		t.Error("an event under the directory's old path")
	}
	if l := w.list(); !slices.Contains(l, "/b") || slices.Contains(l, "/a") {
		t.Errorf("list %q: want /b and not /a", l)
	}

	// Removed: the kernel drops the watch.
	must(os.RemoveAll(filepath.Join(root, "b")))
	rec.wait(t, "/b", "-")
	deadline := time.Now().Add(5 * time.Second)
	for slices.Contains(w.list(), "/b") {
		if time.Now().After(deadline) {
			t.Fatalf("list %q: /b removed 5 s ago", w.list())
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Removing a watch stops its events.
	must(os.Mkdir(filepath.Join(root, "c"), 0o755))
	wdC, err := w.add("/c", filepath.Join(root, "c"))
	must(err)
	w.remove("/c", filepath.Join(root, "c"), wdC)
	must(os.WriteFile(filepath.Join(root, "c", "h.txt"), []byte("x"), 0o644))
	must(os.WriteFile(filepath.Join(root, "sentinel"), nil, 0o644))
	rec.wait(t, "/sentinel", "c") // events are in order: h.txt's would be in by now
	if rec.has("/c/h.txt") {
		t.Error("an event from a removed watch")
	}

	// Not a directory (IN_ONLYDIR), and missing: errors naming the path.
	if _, err := w.add("/sentinel", filepath.Join(root, "sentinel")); err == nil || !strings.Contains(err.Error(), "sentinel") {
		t.Errorf("watching a file: %v, want an error naming it", err)
	}
	if _, err := w.add("/nope", filepath.Join(root, "nope")); !os.IsNotExist(err) {
		t.Errorf("watching a missing directory: %v, want not-exist", err)
	}

	rec.mu.Lock()
	fails, overflows := rec.fails, rec.overflows
	rec.mu.Unlock()
	if len(fails) > 0 || overflows > 0 {
		t.Errorf("fails %v, overflows %d", fails, overflows)
	}
	must(w.close())
	select {
	case <-rec.done:
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return after close")
	}
	if _, err := w.add("/", root); err != errWatcherClosed {
		t.Errorf("add after close: %v, want errWatcherClosed", err)
	}
}

// TestInotifyOverflow: more events than the kernel queues before they are
// read is reported as an overflow (the store then rescans), not an error.
func TestInotifyOverflow(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/fs/inotify/max_queued_events")
	if err != nil {
		t.Skipf("cannot read the queue's limit: %v", err)
	}
	limit, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || limit > 1<<15 {
		t.Skipf("max_queued_events %q: too many files to make for an overflow", b)
	}
	root := t.TempDir()
	w, err := newDirWatcher(root)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if _, err := w.add("/", root); err != nil {
		t.Fatal(err)
	}
	for i := range limit + 10 { // one IN_CREATE each, nobody reading
		f, err := os.Create(filepath.Join(root, fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	rec := runWatcher(t, w)
	deadline := time.Now().Add(5 * time.Second)
	for {
		rec.mu.Lock()
		n, fails := rec.overflows, rec.fails
		rec.mu.Unlock()
		if len(fails) > 0 {
			t.Fatalf("fails: %v", fails)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no overflow after %d creations, queue limit %d", limit+10, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !rec.has("/0") {
		t.Error("the queued events before the overflow were lost")
	}
}
