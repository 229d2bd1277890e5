//go:build !linux

package shard

import (
	"errors"
	"path/filepath"
	"strings"

	"github.com/fsnotify/fsnotify"
)

// fsWatcher is the watcher where inotify is not: fsnotify (kqueue, Windows'
// ReadDirectoryChanges), its events mapped back to store paths.
type fsWatcher struct {
	w    *fsnotify.Watcher
	root string
}

func newDirWatcher(root string) (dirWatcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	return &fsWatcher{w: w, root: root}, nil
}

func (w *fsWatcher) add(_, abs string) (int32, error) {
	err := w.w.Add(abs)
	if errors.Is(err, fsnotify.ErrClosed) {
		return 0, errWatcherClosed
	}
	return 0, err
}

func (w *fsWatcher) remove(_, abs string, _ int32) { _ = w.w.Remove(abs) }

func (w *fsWatcher) close() error { return w.w.Close() }

func (w *fsWatcher) list() []string {
	var l []string
	for _, name := range w.w.WatchList() {
		if p, ok := eventPath(w.root, name); ok {
			l = append(l, p)
		}
	}
	return l
}

// run moves fsnotify's events on until it is closed. fsnotify sends some
// errors while holding the lock that Add and Remove need, so run never
// waits for anything but its callbacks, which must not block.
func (w *fsWatcher) run(ev func(p string, create, write bool), overflow func(), fail func(error)) {
	for {
		select {
		case e, ok := <-w.w.Events:
			if !ok {
				return
			}
			if p, ok := eventPath(w.root, e.Name); ok {
				create := e.Has(fsnotify.Create)
				ev(p, create, e.Has(fsnotify.Write))
			}
		case err, ok := <-w.w.Errors:
			if !ok {
				return
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				overflow()
			} else {
				fail(err)
			}
		}
	}
}

// eventPath returns the slash-rooted store path of file-system path name
// under root.
func eventPath(root, name string) (string, bool) {
	if name == root {
		return "/", true
	}
	prefix := root
	if !strings.HasSuffix(prefix, string(filepath.Separator)) {
		prefix += string(filepath.Separator)
	}
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || rest == "" {
		return "", false
	}
	return "/" + filepath.ToSlash(rest), true
}
