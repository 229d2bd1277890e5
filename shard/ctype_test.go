package shard

import (
	"fmt"
	"sync"
	"testing"
	"unsafe"
)

// TestItemSize: an Item stays in the 64-byte size class, a directory's
// record (where a file's identity is 16 bytes) in the 48-byte one.
func TestItemSize(t *testing.T) {
	if n := unsafe.Sizeof(Item{}); n > 64 {
		t.Errorf("Item is %d bytes, want at most 64", n)
	}
	if n := unsafe.Sizeof(dirRec{}); n > 48 && unsafe.Sizeof(fileID{}) == 16 {
		t.Errorf("dirRec is %d bytes, want at most 48", n)
	}
}

// TestContentType: a type set is the type read back, the same type gets the
// same number, "" is 0; past the table's room a type is kept in the
// extension, and setting a known type again clears it; concurrent setters
// and readers agree (run with -race).
func TestContentType(t *testing.T) {
	var a, b Item
	a.SetContentType("text/css; charset=utf-8")
	b.SetContentType("text/css; charset=utf-8")
	if a.ContentType() != "text/css; charset=utf-8" || a.ctype != b.ctype || a.ctype == 0 {
		t.Errorf("type %q, numbers %d and %d", a.ContentType(), a.ctype, b.ctype)
	}
	var empty Item
	if empty.ContentType() != "" {
		t.Errorf("a zero Item's type: %q", empty.ContentType())
	}
	empty.SetContentType("")
	if empty.ctype != 0 || empty.more() != nil {
		t.Errorf("the empty type: number %d, extension %v", empty.ctype, empty.more())
	}

	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				typ := fmt.Sprintf("test/concurrent-%d", i%50)
				var it Item
				it.SetContentType(typ)
				if got := it.ContentType(); got != typ {
					t.Errorf("goroutine %d: set %q, got %q", g, typ, got)
					return
				}
			}
		}()
	}
	wg.Wait()

	ctypes.mu.Lock()
	old := ctypeRoom
	ctypeRoom = len(*ctypes.names.Load())
	ctypes.mu.Unlock()
	t.Cleanup(func() {
		ctypes.mu.Lock()
		ctypeRoom = old
		ctypes.mu.Unlock()
	})
	var c Item
	c.SetContentType("application/x-made-up")
	if c.ctype != ctypeOther || c.ContentType() != "application/x-made-up" || c.more() == nil {
		t.Fatalf("past the room: number %d, type %q", c.ctype, c.ContentType())
	}
	c.SetContentType("text/css; charset=utf-8")
	if c.ctype != a.ctype || c.more() != nil || c.ContentType() != "text/css; charset=utf-8" {
		t.Errorf("a known type again: number %d, extension %v, type %q", c.ctype, c.more(), c.ContentType())
	}
}
