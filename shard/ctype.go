package shard

import (
	"sync"
	"sync/atomic"
)

// Content types are few (a file's comes from its extension or from
// sniffing its first bytes; a peer's from the same), so every Item keeps
// its type as a 2-byte number in the process's table of the types seen,
// where a string header took 16 bytes in each (and its bytes, unless
// shared). The table only grows; past its room (a peer sending made-up
// types), an Item keeps its type as a string in its extension.

// ctypeID is a content type's number in ctypes; 0 is "".
type ctypeID uint16

// ctypeOther marks a type kept in the Item's extension (itemMore.ctype).
const ctypeOther ctypeID = 1<<16 - 1

// ctypeRoom is how many types the table holds (tests lower it).
var ctypeRoom = int(ctypeOther)

var ctypes struct {
	mu    sync.Mutex
	ids   map[string]ctypeID
	names atomic.Pointer[[]string] // by ctypeID; replaced (copied) on growth
}

func init() {
	ctypes.ids = map[string]ctypeID{"": 0}
	ctypes.names.Store(&[]string{""})
}

// ctypeFor returns t's number, adding it to the table if it has room (ok
// false when it has none).
func ctypeFor(t string) (id ctypeID, ok bool) {
	names := *ctypes.names.Load()
	for i, n := range names[:min(len(names), 8)] { // the common types come first
		if n == t {
			return ctypeID(i), true
		}
	}
	ctypes.mu.Lock()
	defer ctypes.mu.Unlock()
	if id, ok := ctypes.ids[t]; ok {
		return id, true
	}
	names = *ctypes.names.Load()
	if len(names) >= ctypeRoom {
		return 0, false
	}
	id = ctypeID(len(names))
	// Readers of the old header read only below its length: appending in
	// place past it is safe, and a new array when full leaves them the old.
	grown := append(names, t)
	ctypes.ids[t] = id
	ctypes.names.Store(&grown)
	return id, true
}

// ContentType is the MIME type: from the extension, else sniffed from the
// first 512 bytes (as http.DetectContentType does); "" if unknown.
func (it *Item) ContentType() string {
	if it.ctype == ctypeOther {
		return it.more().ctype
	}
	return (*ctypes.names.Load())[it.ctype]
}

// SetContentType sets the ContentType of an Item being built, before anyone
// else sees it.
func (it *Item) SetContentType(t string) {
	id, ok := ctypeFor(t)
	if it.ctype == ctypeOther || !ok {
		m := it.ext()
		m.ctype = ""
		if !ok {
			m.ctype = t
		}
		it.setExt(m)
	}
	if !ok {
		id = ctypeOther
	}
	it.ctype = id
}
