package shard

import (
	"crypto/sha256"
	"hash"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"
)

// The store keeps, for every file it loaded, an Item with no Variants: the
// file's own data. An item without precompressed siblings is published as
// that very Item; one with siblings as a copy that adds the Variants.

// held is the number of body bytes it keeps in memory.
func held(it *Item) int64 {
	if it == nil {
		return 0
	}
	return int64(len(it.Body())) + it.Chunks().Len()
}

// sameContent reports whether a and b (file data, no Variants) describe the
// same bytes with the same metadata and residency, so that b can be dropped
// in favour of a.
func sameContent(a, b *Item) bool {
	return a != nil && b != nil && SameVersion(a, b) && a.Size == b.Size &&
		SameModTime(a, b) && a.ContentType() == b.ContentType() && a.Resident() == b.Resident()
}

// sniffLen is how many leading bytes http.DetectContentType looks at.
const sniffLen = 512

// contentType returns the MIME type of the file at p: from its extension,
// else sniffed from its first bytes, as Caddy's file_server does.
func contentType(p string, head []byte) string {
	if t := mime.TypeByExtension(path.Ext(p)); t != "" {
		return t
	}
	if len(head) > sniffLen {
		head = head[:sniffLen]
	}
	return http.DetectContentType(head)
}

// newHash returns the content hash, reset: give it back with freeHash.
// SHA-256: strong, the same everywhere, and accelerated (SHA-NI, ARMv8
// crypto) on the machines this runs on.
func newHash() hash.Hash {
	h := hashes.Get().(hash.Hash)
	h.Reset()
	return h
}

// freeHash gives back a hash from newHash, once its sum is taken.
func freeHash(h hash.Hash) { hashes.Put(h) }

// hashes are content hashes for reuse: one per file read took 41 MB of
// garbage to prime 335,000 files.
var hashes = sync.Pool{New: func() any { return sha256.New() }}

// tagSum turns a finished content hash into the item's Tag: its first 16
// bytes.
func tagSum(h hash.Hash) Tag {
	var sum [sha256.Size]byte
	return Tag(h.Sum(sum[:0]))
}

// encoding is a precompressed variant's Content-Encoding and file suffix.
type encoding struct {
	name string // "br", "gzip", "zstd"
	ext  string // ".br", ".gz", ".zst"
}

// encodingExt maps the Content-Encoding tokens this package knows to the
// suffixes of their sibling files.
var encodingExt = map[string]string{
	"br":   ".br",
	"gzip": ".gz",
	"zstd": ".zst",
}

// siblingBase reports whether p is a precompressed sibling for one of encs
// ("/x.css.gz" for gzip) and returns the path of the file it would compress.
// Whether that file exists is the caller's question.
func siblingBase(encs []encoding, p string) (string, bool) {
	for _, e := range encs {
		if base, ok := strings.CutSuffix(p, e.ext); ok && base != "" && !strings.HasSuffix(base, "/") {
			return base, true
		}
	}
	return "", false
}

// withVariants returns the Item to publish for the file data base and the
// data of its precompressed siblings (nil where there is none, in the
// store's order of preference): base itself when there are none.
func withVariants(base *Item, encs []encoding, sibs []*Item) *Item {
	if sibs == nil {
		return base
	}
	it := base.copyFields()
	vs := make([]Variant, 0, len(sibs))
	for i, v := range sibs {
		if v == nil {
			continue
		}
		vs = append(vs, Variant{
			Encoding: encs[i].name,
			Size:     v.Size,
			ModTime:  v.ModTime(),
			ETag:     v.ETag(),
			Body:     v.Body(),
			Chunks:   v.Chunks(),
			keep:     v.keeper(),
		})
	}
	it.SetVariants(vs)
	return it
}

// copyFields returns a new Item with the fields of it, field by field: an
// Item is never copied (its finalizer, if it owns its body, is its own).
func (it *Item) copyFields() *Item {
	c := &Item{
		Path:  it.Path,
		Size:  it.Size,
		mtime: it.mtime,
		ctype: it.ctype,
		Tag:   it.Tag,
		ref:   it.ref, // the body pointer, or the extension (shared)
		flags: it.flags &^ ownsBody,
	}
	if it.flags&ownsBody != 0 {
		// The copy keeps it, the anchor of the body (it does not own it).
		x := it.ext()
		x.keep = keeper{owner: it}
		c.setExt(x)
	}
	return c
}

// sameItem reports whether a and b are interchangeable: same metadata and
// the very same body slices (not merely equal bytes), so keeping a instead of
// b keeps no extra memory alive.
func sameItem(a, b *Item) bool {
	if a == b {
		return true
	}
	if a == nil || b == nil {
		return a == b
	}
	if a.Path != b.Path || a.Size != b.Size || !SameModTime(a, b) ||
		a.ContentType() != b.ContentType() || !SameVersion(a, b) || !sameBytes(a.Body(), b.Body()) || !sameChunks(a.Chunks(), b.Chunks()) ||
		len(a.Variants()) != len(b.Variants()) {
		return false
	}
	av, bv := a.Variants(), b.Variants()
	for i := range av {
		v, w := &av[i], &bv[i]
		if v.Encoding != w.Encoding || v.Size != w.Size || !v.ModTime.Equal(w.ModTime) ||
			v.ETag != w.ETag || !sameBytes(v.Body, w.Body) || !sameChunks(v.Chunks, w.Chunks) {
			return false
		}
	}
	return true
}

// sameBytes reports whether a and b are the same slice of the same array.
func sameBytes(a, b []byte) bool {
	if len(a) != len(b) || (a == nil) != (b == nil) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0]
}
