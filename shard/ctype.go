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
	ids   sync.Map                 // type → ctypeID: lock-free for the types already in
	mu    sync.Mutex               // adds a type
	names atomic.Pointer[[]string] // by ctypeID; grown by the adder, under mu
}

func init() {
	ctypes.ids.Store("", ctypeID(0))
	ctypes.names.Store(&[]string{""})
}

// ctypeFor returns t's number, adding it to the table if it has room (ok
// false when it has none). A type already in costs a lookup without a lock:
// every Item built for a request from a table of content gets its type
// here.
func ctypeFor(t string) (id ctypeID, ok bool) {
	if v, ok := ctypes.ids.Load(t); ok {
		return v.(ctypeID), true
	}
	ctypes.mu.Lock()
	defer ctypes.mu.Unlock()
	if v, ok := ctypes.ids.Load(t); ok {
		return v.(ctypeID), true
	}
	names := *ctypes.names.Load()
	if len(names) >= ctypeRoom {
		return 0, false
	}
	id = ctypeID(len(names))
	// Readers of the old header read only below its length: appending in
	// place past it is safe, and a new array when full leaves them the old.
	grown := append(names, t)
	ctypes.names.Store(&grown)
	ctypes.ids.Store(t, id)
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
