package shard

import (
	"math"
	"testing"
	"time"
)

// An Item keeps an ETag made of a content hash as its 16-byte Tag, and any
// other ETag as given: either way ETag, Version, HasVersion and SameVersion
// give back what was set, and setting chunks or variants afterwards keeps it.
func TestItemETag(t *testing.T) {
	const hexTag = "0123456789abcdef0011223344556677"
	for _, c := range []struct {
		etag    string
		tagged  bool // kept as a Tag
		version string
	}{
		{`"` + hexTag + `"`, true, hexTag},
		{`"v1"`, false, "v1"},
		{`"` + "0123456789ABCDEF0011223344556677" + `"`, false, "0123456789ABCDEF0011223344556677"}, // upper case: given back as is
		{hexTag, false, "123456789abcdef001122334455667"},                                           // unquoted: as Version did, the quotes are assumed
		{`"` + hexTag + `0"`, false, hexTag + "0"},
	} {
		it := &Item{Path: "/x"}
		it.SetETag(c.etag)
		it.SetVariants([]Variant{{Encoding: "gzip", ETag: `"gz"`}})
		it.SetChunks(Chunks{[]byte("a")})
		if got := it.ETag(); got != c.etag {
			t.Errorf("SetETag(%s): ETag %s", c.etag, got)
		}
		if got := string(it.AppendETag([]byte("x"))); got != "x"+c.etag {
			t.Errorf("SetETag(%s): AppendETag %s", c.etag, got)
		}
		if got := it.Version(); got != c.version {
			t.Errorf("SetETag(%s): Version %s; want %s", c.etag, got, c.version)
		}
		if (it.Tag != Tag{}) != c.tagged {
			t.Errorf("SetETag(%s): Tag %x", c.etag, it.Tag)
		}
		if !it.HasVersion(c.version) || it.HasVersion(c.version+"0") || it.HasVersion("") {
			t.Errorf("SetETag(%s): HasVersion wrong", c.etag)
		}
		if len(it.Variants()) != 1 || len(it.Chunks()) != 1 {
			t.Errorf("SetETag(%s): variants %d, chunks %d", c.etag, len(it.Variants()), len(it.Chunks()))
		}
		cp := &Item{Path: "/x/0"}
		cp.SetETagOf(it)
		if !SameVersion(cp, it) || cp.ETag() != c.etag {
			t.Errorf("SetETagOf(%s): ETag %s", c.etag, cp.ETag())
		}
	}

	a, b := &Item{}, &Item{}
	a.SetETag(`"v1"`)
	b.SetETag(`"v2"`)
	if SameVersion(a, b) {
		t.Error("v1 and v2 have the same version")
	}
	b.SetETag(`"0123456789abcdef0011223344556677"`)
	a.SetETag(b.ETag()) // from other back to a Tag
	if !SameVersion(a, b) || a.otherETag() != "" {
		t.Errorf("set again: %s", a.ETag())
	}

	// A zero Tag is no ETag; the hash of 16 zero bytes is kept as given.
	none, zero := &Item{}, &Item{}
	zero.SetETag(`"00000000000000000000000000000000"`)
	if none.ETag() != "" || none.Version() != "" || !none.HasVersion("") || string(none.AppendETag([]byte("x"))) != "x" {
		t.Errorf("no ETag: ETag %q, Version %q, HasVersion(\"\") %v", none.ETag(), none.Version(), none.HasVersion(""))
	}
	if zero.ETag() != `"00000000000000000000000000000000"` || zero.Version() != "00000000000000000000000000000000" ||
		zero.HasVersion("") || !zero.HasVersion("00000000000000000000000000000000") {
		t.Errorf("the zero hash: ETag %q, Version %q", zero.ETag(), zero.Version())
	}
	if SameVersion(none, zero) || !SameVersion(none, &Item{}) {
		t.Error("no ETag and the zero hash compare wrong")
	}
	none.SetETag("")
	if none.ETag() != "" || none.more() != nil {
		t.Errorf("SetETag(\"\"): ETag %q, extension %v", none.ETag(), none.more())
	}
}

// A hit reads the ETag without allocating when given room.
func TestAppendETagAllocs(t *testing.T) {
	it := &Item{Tag: Tag{1, 2, 3}}
	var room [34]byte
	if n := testing.AllocsPerRun(100, func() { it.AppendETag(room[:0]) }); n != 0 {
		t.Errorf("AppendETag allocates %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { it.HasVersion("01020300000000000000000000000000") }); n != 0 {
		t.Errorf("HasVersion allocates %v times", n)
	}
}

// An Item keeps its ModTime in 8 bytes, and gives back exactly the time it
// was given: the zero time, the epoch, times int64 nanoseconds cannot hold
// (kept in its extension) and the two values that stand for those.
func TestItemModTime(t *testing.T) {
	now := time.Now()
	for _, mt := range []time.Time{
		{},
		time.Unix(0, 0),
		time.Unix(1, 0),
		time.Unix(0, 1),
		now,
		time.Unix(0, math.MinInt64),   // 1677: the epoch's stand-in
		time.Unix(0, math.MinInt64+1), // and the far times'
		time.Date(1600, 1, 2, 3, 4, 5, 6, time.UTC),
		time.Date(2500, 1, 2, 3, 4, 5, 6, time.UTC),
	} {
		it := &Item{Path: "/x"}
		it.SetChunks(Chunks{[]byte("a")})
		it.SetModTime(mt)
		it.SetETag(`"v1"`)
		if got := it.ModTime(); !got.Equal(mt) || got.IsZero() != mt.IsZero() {
			t.Errorf("SetModTime(%v): ModTime %v", mt, got)
		}
		if len(it.Chunks()) != 1 || it.ETag() != `"v1"` {
			t.Errorf("SetModTime(%v) lost the chunks or the ETag", mt)
		}
		other := &Item{}
		other.SetModTime(mt)
		if !SameModTime(it, other) {
			t.Errorf("SetModTime(%v): not the same as itself", mt)
		}
		other.SetModTime(mt.Add(time.Nanosecond))
		if SameModTime(it, other) {
			t.Errorf("SetModTime(%v): the same as a nanosecond later", mt)
		}
		it.SetModTime(now) // a far time's extension goes
		if !it.ModTime().Equal(now) || !it.ext().mtime.IsZero() {
			t.Errorf("SetModTime(%v), then now: %v, extension %v", mt, it.ModTime(), it.ext().mtime)
		}
	}
	if it := (&Item{}); !it.ModTime().IsZero() {
		t.Errorf("an Item's zero ModTime is %v", it.ModTime())
	}
}

// An Item's Body is Size bytes or none: SetBody refuses any other length
// and leaves the Item as it was.
func TestItemBody(t *testing.T) {
	b := []byte("abcd")
	it := &Item{Size: 4}
	if err := it.SetBody(b[1:]); err == nil || it.Body() != nil || it.Resident() {
		t.Fatalf("a 3-byte body for a 4-byte item: %v, Body %q", err, it.Body())
	}
	if err := it.SetBody(b); err != nil || &it.Body()[0] != &b[0] || len(it.Body()) != 4 || !it.Resident() {
		t.Fatalf("SetBody(4 bytes): %v, Body %q", err, it.Body())
	}
	if err := it.SetBody(nil); err != nil || it.Body() != nil {
		t.Fatalf("SetBody(nil): %v, Body %q", err, it.Body())
	}
	empty := &Item{}
	if err := empty.SetBody([]byte{}); err != nil || empty.Body() == nil || len(empty.Body()) != 0 {
		t.Fatalf("an empty body: %v, %v", err, empty.Body() == nil)
	}
}
