//go:build unix

package shard

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// linkTree is a root reached through a symbolic link (alias), with a
// directory outside it, and links of every kind in it.
type linkTree struct {
	base, real, alias, outside string
}

const secret = "SECRET outside the root"

// makeLinkTree builds the tree under a temporary directory:
//
//	real/            the root, configured as alias (a link to real)
//	outside/secret   never to be served, nor opened
//	outside/fifo     a named pipe: opening it for reading would block
func makeLinkTree(t *testing.T) linkTree {
	t.Helper()
	base := t.TempDir()
	if b, err := filepath.EvalSymlinks(base); err == nil {
		base = b
	}
	lt := linkTree{
		base:    base,
		real:    filepath.Join(base, "real"),
		alias:   filepath.Join(base, "alias"),
		outside: filepath.Join(base, "outside"),
	}
	writeTree(t, lt.real, map[string]string{
		"real.txt":     "real",
		"sub/deep.txt": "deep",
		"sub/ok.txt":   "ok",
	})
	writeTree(t, lt.outside, map[string]string{"secret": secret, "d/secret2": secret})
	if err := syscall.Mkfifo(filepath.Join(lt.outside, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	// If anything opened the pipe for reading, it is blocked: free it (the
	// store's Close waits for it), and fail.
	t.Cleanup(func() {
		fd, err := syscall.Open(filepath.Join(lt.outside, "fifo"), syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			syscall.Close(fd)
			t.Errorf("the named pipe outside the root was opened for reading")
		}
	})
	symlink(t, "real", lt.alias)
	return lt
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// The links of TestSymlinks, by path in the root, and what they serve.
var (
	// linksIn lead inside the root: served like their target.
	linksIn = map[string]struct{ target, serves string }{
		"in.txt":       {"real.txt", "real"},
		"chain-in.txt": {"in.txt", "real"},
		"sub/up.txt":   {"../real.txt", "real"},
		"subdir-link":  {"sub", ""},
		// Absolute: "@" is the root as configured (through the alias),
		// "%" the root's real path.
		"abs-in.txt":     {"@/real.txt", "real"},
		"abs-real.txt":   {"%/real.txt", "real"},
		"abs-dotted.txt": {"@//./sub/../real.txt", "real"},
		"abs-dir":        {"%/sub", ""},
	}
	// linksOut lead out of the root, or nowhere: never served.
	linksOut = map[string]string{
		"out.txt":          "$/secret", // "$": the outside directory
		"outdir":           "$",
		"rel-out.txt":      "../outside/secret",
		"sub/rel-out2.txt": "../../outside/secret",
		"hop":              "$/secret",
		"chain-out.txt":    "hop",
		"chain-out2.txt":   "sub/rel-out2.txt",
		"abs-sneaky.txt":   "@/../outside/secret",
		"abs-prefix.txt":   "%-not/secret",
		"fifo-abs":         "$/fifo",
		"fifo-rel":         "../outside/fifo",
		"dangling":         "nowhere",
		"loop-a":           "loop-b",
		"loop-b":           "loop-a",
	}
	// linksCycle lead to an ancestor of their own directory: served from
	// storage before priming is done, not walked, so not found after.
	linksCycle = map[string]string{
		"self":       ".",
		"sub/back":   "..",
		"sub/abs-up": "%",
	}
)

func (lt linkTree) target(t string) string {
	r := strings.NewReplacer("@", lt.alias, "%", lt.real, "$", lt.outside)
	return r.Replace(t)
}

func (lt linkTree) makeLinks(t *testing.T) {
	t.Helper()
	for name, l := range linksIn {
		symlink(t, lt.target(l.target), filepath.Join(lt.real, name))
	}
	for name, target := range linksOut {
		symlink(t, lt.target(target), filepath.Join(lt.real, name))
	}
	for name, target := range linksCycle {
		symlink(t, lt.target(target), filepath.Join(lt.real, name))
	}
}

// servedThroughLinks are the files served at paths with links in them,
// and their bytes.
var servedThroughLinks = map[string]string{
	"/in.txt":               "real",
	"/chain-in.txt":         "real",
	"/sub/up.txt":           "real",
	"/abs-in.txt":           "real",
	"/abs-real.txt":         "real",
	"/abs-dotted.txt":       "real",
	"/subdir-link/deep.txt": "deep",
	"/subdir-link/ok.txt":   "ok",
	"/subdir-link/up.txt":   "real", // ../real.txt from sub
	"/abs-dir/deep.txt":     "deep",
	"/abs-dir/ok.txt":       "ok",
	"/abs-dir/up.txt":       "real",
}

func TestSymlinks(t *testing.T) {
	bothOpeners(t, func(t *testing.T, setup func(*Store)) {
		for _, mem := range []int64{0, 1} { // resident, and read from storage by Open
			t.Run(fmt.Sprintf("memory=%d", mem), func(t *testing.T) { testSymlinks(t, setup, mem) })
		}
	})
}

func testSymlinks(t *testing.T, setup func(*Store), mem int64) {
	lt := makeLinkTree(t)
	lt.makeLinks(t)
	s := newStore(t, Config{Root: lt.alias, Memory: mem}, nil)
	setup(s)

	refused := []string{
		"/../outside/secret", "/sub/../../outside/secret",
		"relative.txt", "/real.txt/", "//real.txt", "/./real.txt",
		"/outdir/secret", "/outdir/d/secret2", "/outdir/d",
	}
	for name := range linksOut {
		refused = append(refused, "/"+name)
	}
	check := func(t *testing.T) {
		mustLookup(t, s, "/real.txt", "real")
		mustLookup(t, s, "/sub/deep.txt", "deep")
		for p, want := range servedThroughLinks {
			it := mustLookup(t, s, p, want)
			if it.Path != p {
				t.Errorf("Lookup(%s).Path = %s", p, it.Path)
			}
		}
		mustDir(t, s, "/subdir-link")
		mustDir(t, s, "/abs-dir")
		for _, p := range refused {
			it, isDir, err := s.Lookup(p)
			if err == nil || it != nil || isDir {
				t.Errorf("Lookup(%q) = %v, %v, %v; want refused", p, it, isDir, err)
			}
		}
		for _, p := range []string{"/out.txt", "/outdir/secret", "/rel-out.txt", "/chain-out.txt", "/abs-sneaky.txt", "/../outside/secret"} {
			if f, err := s.Open(&Item{Path: p, Size: int64(len(secret))}, ""); err == nil {
				f.Close()
				t.Errorf("Open(%s) succeeded: it leads out of the root", p)
			}
		}
	}
	t.Run("from storage", func(t *testing.T) {
		check(t)
		// Before priming, storage answers paths through cycles too.
		mustLookup(t, s, "/self/real.txt", "real")
		mustLookup(t, s, "/sub/back/sub/ok.txt", "ok")
	})
	startReady(t, s)
	t.Run("primed", func(t *testing.T) {
		check(t)
		for name := range linksCycle {
			mustNotFound(t, s, "/"+name)
		}
		mustNotFound(t, s, "/self/real.txt")
		mustNotFound(t, s, "/sub/back/sub/ok.txt")

		want := []string{"/real.txt", "/sub/deep.txt", "/sub/ok.txt"}
		for p := range servedThroughLinks {
			want = append(want, p)
		}
		var got []string
		s.Each(func(it *Item) bool {
			got = append(got, it.Path)
			return true
		})
		sort.Strings(got)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Errorf("Each yields %q;\nwant %q", got, want)
		}
	})
}

// TestSymlinkWatch: links are picked up and dropped by the watcher; the
// target of a link changing shows at the link's path after a rescan.
func TestSymlinkWatch(t *testing.T) {
	lt := makeLinkTree(t)
	lt.makeLinks(t)
	var log changeLog
	s := newStore(t, Config{Root: lt.alias, Rescan: time.Hour, OnChange: log.record}, nil)
	startReady(t, s)
	if s.watch.w == nil {
		t.Skip("no file watcher")
	}
	for _, w := range s.watch.w.list() {
		for _, l := range []string{"subdir-link", "abs-dir", "self", "sub/back"} {
			if strings.HasPrefix(w, "/"+l) {
				t.Errorf("watching %s: a path through a directory link", w)
			}
		}
	}

	// The real file changes: at once at its path, at the links' after a rescan.
	writeTree(t, lt.real, map[string]string{"real.txt": "real, changed"})
	reflect(t, s, &log, "/real.txt", "real, changed")
	mustLookup(t, s, "/in.txt", "real") // not yet: rescans only
	s.rescan()
	for _, p := range []string{"/in.txt", "/abs-in.txt", "/subdir-link/up.txt", "/abs-dir/up.txt"} {
		reflect(t, s, &log, p, "real, changed")
	}
	writeTree(t, lt.real, map[string]string{"sub/deep.txt": "deeper"})
	reflect(t, s, &log, "/sub/deep.txt", "deeper")
	s.rescan()
	reflect(t, s, &log, "/subdir-link/deep.txt", "deeper")

	// New links, a retargeted one, a removed one: events in watched directories.
	symlink(t, "real.txt", filepath.Join(lt.real, "new.txt"))
	reflect(t, s, &log, "/new.txt", "real, changed")
	symlink(t, "sub", filepath.Join(lt.real, "new-dir"))
	reflect(t, s, &log, "/new-dir/ok.txt", "ok")
	if err := os.Remove(filepath.Join(lt.real, "in.txt")); err != nil {
		t.Fatal(err)
	}
	symlink(t, filepath.Join(lt.outside, "secret"), filepath.Join(lt.real, "in.txt"))
	reflect(t, s, &log, "/in.txt", "-")
	if err := os.Remove(filepath.Join(lt.real, "subdir-link")); err != nil {
		t.Fatal(err)
	}
	reflect(t, s, &log, "/subdir-link/ok.txt", "-")
	mustNotFound(t, s, "/subdir-link")

	// A directory replaced by a link to the root itself: gone, and not
	// walked through.
	if err := os.RemoveAll(filepath.Join(lt.real, "sub")); err != nil {
		t.Fatal(err)
	}
	symlink(t, ".", filepath.Join(lt.real, "sub"))
	reflect(t, s, &log, "/sub/ok.txt", "-")
	s.rescan()
	for _, p := range []string{"/sub", "/sub/real.txt", "/sub/sub/real.txt", "/new-dir/ok.txt"} {
		mustNotFound(t, s, p)
	}
	s.Each(func(it *Item) bool {
		if strings.Contains(string(it.Body()), "SECRET") {
			t.Errorf("%s serves the file outside the root", it.Path)
		}
		return true
	})
}

// TestSymlinkCycles: the walk ends on trees whose directory links loop, and
// bounds how many directory links one path crosses.
func TestSymlinkCycles(t *testing.T) {
	s := newStore(t, Config{}, map[string]string{"a/b/c/f": "f", "top": "top"})
	root := s.Root()
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		t.Fatal(err)
	}
	symlink(t, "..", filepath.Join(root, "a/b/up"))
	symlink(t, "../../..", filepath.Join(root, "a/b/c/root"))
	symlink(t, real, filepath.Join(root, "a/abs-root"))
	symlink(t, ".", filepath.Join(root, "a/b/c/self"))
	symlink(t, "b", filepath.Join(root, "a/down")) // not a cycle: served
	symlink(t, "../loop2", filepath.Join(root, "loop1/to2"))
	symlink(t, "../loop1", filepath.Join(root, "loop2/to1"))
	// A chain of directories, each linking to the next.
	const n = maxDirLinks + 3
	for i := range n {
		writeTree(t, root, map[string]string{fmt.Sprintf("x%d/f%d", i, i): fmt.Sprint(i)})
		if i+1 < n {
			symlink(t, fmt.Sprintf("../x%d", i+1), filepath.Join(root, fmt.Sprintf("x%d/next", i)))
		}
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		startReady(t, s)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("priming does not end")
	}
	mustLookup(t, s, "/a/b/c/f", "f")
	mustLookup(t, s, "/a/down/c/f", "f")
	for _, p := range []string{"/a/b/up", "/a/b/up/b/c/f", "/a/b/c/root", "/a/abs-root/top", "/a/b/c/self/f"} {
		mustNotFound(t, s, p)
	}
	// loop1/to2 is loop2, whose to1 is loop1: an ancestor.
	mustDir(t, s, "/loop1/to2")
	mustNotFound(t, s, "/loop1/to2/to1")
	mustDir(t, s, "/loop2/to1")
	mustNotFound(t, s, "/loop2/to1/to2")

	// x0/next/.../next/fk: k links crossed.
	for k := 0; k < n; k++ {
		p := "/x0" + strings.Repeat("/next", k) + fmt.Sprintf("/f%d", k)
		if k <= maxDirLinks {
			mustLookup(t, s, p, fmt.Sprint(k))
		} else {
			mustNotFound(t, s, p)
		}
	}
	// The rescan finds the same.
	before := s.Stats()
	s.rescan()
	if after := s.Stats(); after.Items != before.Items || after.Dirs != before.Dirs {
		t.Errorf("rescan changed the tree: %+v -> %+v", before, after)
	}
}

func TestCutPrefixPath(t *testing.T) {
	cases := []struct {
		target, root, rest string
		ok                 bool
	}{
		{"/srv/site/a.txt", "/srv/site", "a.txt", true},
		{"/srv/site", "/srv/site", "", true},
		{"/srv/site/", "/srv/site", "", true},
		{"//srv/./site//a/../b", "/srv/site", "/a/../b", true},
		{"/srv/site/../x", "/srv/site", "../x", true}, // the caller refuses the ".."
		{"/srv/sitex/a", "/srv/site", "", false},
		{"/srv/x/../site/a", "/srv/site", "", false},
		{"/srv", "/srv/site", "", false},
		{"/etc/passwd", "/srv/site", "", false},
		{"/etc/passwd", "/", "/etc/passwd", true}, // empty components are skipped by the caller
	}
	for _, c := range cases {
		rest, ok := cutPrefixPath(c.target, c.root)
		if ok != c.ok || rest != c.rest {
			t.Errorf("cutPrefixPath(%q, %q) = %q, %v; want %q, %v", c.target, c.root, rest, ok, c.rest, c.ok)
		}
	}
}

func TestResolveIn(t *testing.T) {
	lt := makeLinkTree(t)
	lt.makeLinks(t)
	s := newStore(t, Config{Root: lt.alias}, nil)
	r, err := s.fsRoot()
	if err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]string{
		".":                       ".",
		"in.txt":                  "real.txt",
		"chain-in.txt":            "real.txt",
		"abs-dotted.txt":          "real.txt",
		"abs-dir/up.txt":          "real.txt",
		"subdir-link/../real.txt": "real.txt", // subdir-link is sub: its parent is the root
		"sub/back/sub/deep.txt":   "sub/deep.txt",
		"self/self/sub":           "sub",
	} {
		if got, err := s.resolveIn(r, rel); err != nil || got != want {
			t.Errorf("resolveIn(%s) = %q, %v; want %q", rel, got, err, want)
		}
	}
	// A missing directory on the way is not skipped by its "..".
	if got, err := s.resolveIn(r, "sub/nope/../deep.txt"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("resolveIn(sub/nope/../deep.txt) = %q, %v; want not found", got, err)
	}
	for name := range linksOut {
		if got, err := s.resolveIn(r, name); !missing(err) {
			t.Errorf("resolveIn(%s) = %q, %v; want refused", name, got, err)
		}
	}
	for _, rel := range []string{"out.txt", "rel-out.txt", "hop", "abs-sneaky.txt", "loop-a"} {
		if _, err := s.statIn(r, rel); !missing(err) {
			t.Errorf("statIn(%s) = %v; want refused", rel, err)
		}
	}
}
