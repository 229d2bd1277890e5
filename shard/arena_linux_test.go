package shard

import (
	"bytes"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestArenaPrefault checks that the memory above an arena's top is made
// resident a prefaultStep at a time as bodies are handed out there, without
// touching the bytes of bodies already in it, and that it is given back when
// the top comes down again.
func TestArenaPrefault(t *testing.T) {
	const size = 16 << 20
	a, err := newArena(size)
	if err != nil {
		t.Skipf("no arena on this machine (%v): nothing is prefaulted", err)
	}
	defer unix.Munmap(a.mem)
	defer unix.Close(a.sys.fd)
	resident := func(off int64) bool {
		t.Helper()
		var vec [1]byte
		b := a.mem[off : off+4096]
		if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
			t.Fatalf("mincore: %v", errno)
		}
		return vec[0]&1 != 0
	}
	if resident(0) {
		t.Fatal("a new arena's first page is resident before anything was handed out")
	}
	first := a.alloc(1024)
	if first != 0 {
		t.Fatalf("first extent at %d; want 0", first)
	}
	if noPrefault.Load() {
		t.Skip("this kernel refuses MADV_POPULATE_WRITE (before Linux 5.14): pages fault in as they are written")
	}
	for _, off := range []int64{0, 4096, prefaultStep - 4096} {
		if !resident(off) {
			t.Errorf("page at %d not resident after 1 KiB was handed out at 0; want the first %d bytes prefaulted", off, prefaultStep)
		}
	}
	if resident(prefaultStep) {
		t.Errorf("page at %d resident; want only the first %d bytes prefaulted", prefaultStep, prefaultStep)
	}
	want := bytes.Repeat([]byte("body"), 256)
	copy(a.mem[first:], want)
	// Bodies up to past the next step: the step after is prefaulted, the
	// first body keeps its bytes.
	var offs []int64
	for top := int64(1024); top < prefaultStep+64<<10; top += 64 << 10 {
		offs = append(offs, a.alloc(64<<10))
	}
	if !resident(prefaultStep) || !resident(2*prefaultStep-4096) {
		t.Errorf("the second %d bytes are not resident once bodies were handed out there", prefaultStep)
	}
	if resident(2 * prefaultStep) {
		t.Errorf("page at %d resident; want prefaulting to stop at the step the top is in", 2*prefaultStep)
	}
	if !bytes.Equal(a.mem[first:first+int64(len(want))], want) {
		t.Fatal("prefaulting changed the bytes of a body handed out before")
	}
	// Everything above the first body freed: the top comes down and the
	// pages above it go back to the kernel.
	for i := len(offs) - 1; i >= 0; i-- {
		a.free(offs[i], 64<<10)
	}
	if a.top != 1024 {
		t.Fatalf("top %d after freeing everything above the first body; want 1024", a.top)
	}
	if resident(prefaultStep) {
		t.Errorf("page at %d still resident after the top came down below it", prefaultStep)
	}
	// And handed out again, prefaulted again.
	a.alloc(prefaultStep)
	if !resident(prefaultStep) {
		t.Errorf("page at %d not prefaulted once handed out again", prefaultStep)
	}
}
