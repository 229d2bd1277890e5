package shard

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Symbolic links. The store serves what Caddy's file_server serves on the
// same tree, except what lies outside the root: a link whose target resolves
// inside the root is served like its target, under its own path; a link that
// leads out of the root (by "..", by an absolute target elsewhere, or
// through a chain of links) is never followed, and its target is never
// opened, read or even stat'ed: the path is not found, as are dangling links.
//
// Resolution inside the root is the kernel's (openat2 with RESOLVE_BENEATH on
// Linux) or os.Root's: both follow relative links that stay inside and
// refuse anything that would leave, but they also refuse every absolute
// link. When they refuse, resolveIn resolves the path itself, component by
// component through the os.Root, and follows an absolute link when its
// target starts with the root's path (as configured, or with every symbolic
// link in it resolved); anything else is refused. The resolved path, which
// crosses no link, is then opened without following any.

// maxLinks bounds the symbolic links followed resolving one path, as the
// kernel does (Linux's MAXSYMLINKS).
const maxLinks = 40

// errEscapes means a path leads out of the root through a symbolic link (or
// "..") and is treated as missing.
var errEscapes = fmt.Errorf("symbolic link leads out of the root: %w", fs.ErrNotExist)

// needsResolving reports whether err, from os.Root or openat2, may be a
// refusal to follow an absolute symbolic link (or a way out of the root), so
// that resolveIn must decide, rather than a plain answer (not there, not a
// directory, no permission).
func needsResolving(err error) bool {
	return err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) &&
		!errors.Is(err, fs.ErrPermission)
}

// statIn stats rel (root-relative) following symbolic links that stay in
// the root.
func (s *Store) statIn(r *os.Root, rel string) (fs.FileInfo, error) {
	fi, err := r.Stat(rel)
	if !needsResolving(err) {
		return fi, err
	}
	canon, err := s.resolveIn(r, rel)
	if err != nil {
		return nil, err
	}
	return r.Lstat(canon) // a link that appeared since is not followed: not a file
}

// openIn opens rel (root-relative) through the os.Root following symbolic
// links that stay in the root.
func (s *Store) openIn(r *os.Root, rel string) (*os.File, error) {
	f, err := r.Open(rel)
	if !needsResolving(err) {
		return f, err
	}
	canon, err := s.resolveIn(r, rel)
	if err != nil {
		return nil, err
	}
	return r.Open(canon)
}

// resolveIn resolves rel (root-relative) through the os.Root, following
// symbolic links as the kernel would, and returns the root-relative path it
// names, which crosses no symbolic link ("." for the root). A path that
// leaves the root on the way is refused with errEscapes; nothing outside
// the root is looked at.
func (s *Store) resolveIn(r *os.Root, rel string) (string, error) {
	var done []string          // resolved components: real directories (and the last: anything)
	todo := pushPath(nil, rel) // components still to resolve, the next one last
	links := 0
	for len(todo) > 0 {
		c := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		switch c {
		case "", ".":
			continue
		case "..":
			// done holds no link, so its parent is lexical.
			if len(done) == 0 {
				return "", errEscapes
			}
			done = done[:len(done)-1]
			continue
		}
		cur := strings.Join(append(done, c), "/")
		fi, err := r.Lstat(cur)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			done = append(done, c)
			continue
		}
		if links++; links > maxLinks {
			return "", &fs.PathError{Op: "resolve", Path: rel, Err: syscall.ELOOP}
		}
		target, err := r.Readlink(cur)
		if err != nil {
			return "", err
		}
		if target == "" {
			return "", &fs.PathError{Op: "resolve", Path: rel, Err: fs.ErrNotExist}
		}
		if filepath.IsAbs(target) {
			rest, ok := s.cutRoot(target)
			if !ok {
				return "", errEscapes
			}
			done = done[:0]
			target = rest
		}
		todo = pushPath(todo, filepath.ToSlash(target))
	}
	if len(done) == 0 {
		return ".", nil
	}
	return strings.Join(done, "/"), nil
}

// pushPath pushes the slash-separated components of p onto the stack todo,
// so that the first component is popped first.
func pushPath(todo []string, p string) []string {
	parts := strings.Split(p, "/")
	for i := len(parts) - 1; i >= 0; i-- {
		todo = append(todo, parts[i])
	}
	return todo
}

// cutRoot reports whether the absolute link target is inside the root and
// returns the rest of it, relative to the root (it may still hold ".." and
// links: the caller resolves it). The target must start with the root's
// path, as configured or as resolved, component by component; a ".." among
// those components is refused rather than resolved outside the root.
func (s *Store) cutRoot(target string) (string, bool) {
	target = filepath.ToSlash(target)
	for _, root := range [...]string{s.realRoot, s.root} {
		if root == "" {
			continue
		}
		if rest, ok := cutPrefixPath(target, filepath.ToSlash(root)); ok {
			return rest, true
		}
	}
	return "", false
}

// cutPrefixPath matches the components of the clean absolute path root
// against the first components of target, skipping empty and "." ones, and
// returns the rest of target.
func cutPrefixPath(target, root string) (string, bool) {
	want := strings.Split(strings.Trim(root, "/"), "/")
	if want[0] == "" {
		want = want[:0] // the root is "/"
	}
	parts := strings.Split(target, "/")
	i := 0
	for len(want) > 0 && i < len(parts) {
		switch c := parts[i]; c {
		case "", ".":
		case want[0]:
			want = want[1:]
		default:
			return "", false // another name, or ".."
		}
		i++
	}
	if len(want) > 0 {
		return "", false
	}
	return strings.Join(parts[i:], "/"), true
}
