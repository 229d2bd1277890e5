package shard

import "strings"

// Refresh reads the file at p again from storage, or with prefix every
// file this node holds whose path starts with p, even if size and modification time
// look unchanged (an operator's purge: the bytes on storage were replaced
// in a way the watcher could not tell). A file that is gone is removed.
// Changes are published (OnChange) as for any other change. Refresh returns
// once the files are reloaded, with the number of paths it looked at.
func (s *Store) Refresh(p string, prefix bool) int {
	if s.closed.Load() {
		return 0
	}
	paths := make(map[string]look)
	if prefix {
		s.mu.RLock()
		for fp := range s.files.all() {
			if strings.HasPrefix(fp, p) {
				paths[fp] = look{force: true}
			}
		}
		s.mu.RUnlock()
	} else if _, ok := relPath(p); ok {
		paths[p] = look{force: true}
	}
	if len(paths) == 0 {
		return 0
	}
	aff := make(affected)
	s.refreshPaths(paths, aff)
	s.settle(aff)
	return len(paths)
}
