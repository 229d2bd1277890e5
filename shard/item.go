package shard

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

// content is one file as last read from storage: what an Item or a Variant
// is built from. Immutable once made.
type content struct {
	size    int64
	mtime   time.Time
	ctype   string
	version string // hex of the first 16 bytes of the SHA-256 of the bytes
	etag    string // `"` + version + `"`
	body    []byte // nil when the bytes are not held
}

// held is the number of body bytes c keeps in memory.
func (c *content) held() int64 {
	if c == nil {
		return 0
	}
	return int64(len(c.body))
}

// same reports whether c and d describe the same bytes with the same
// metadata and residency, so that d can be dropped in favour of c.
func (c *content) same(d *content) bool {
	return c != nil && d != nil && c.version == d.version && c.size == d.size &&
		c.mtime.Equal(d.mtime) && c.ctype == d.ctype && (c.body == nil) == (d.body == nil)
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

// newHash returns the content hash. SHA-256: strong, the same everywhere, and
// accelerated (SHA-NI, ARMv8 crypto) on the machines this runs on.
func newHash() hash.Hash { return sha256.New() }

// version turns a finished content hash into the item's version string: the
// first 16 bytes in hex (128 bits are plenty to tell versions apart).
func version(h hash.Hash) string {
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])[:16])
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

// newItem builds the Item for the file at p from its content and the
// contents of its precompressed siblings (nil where there is none), which
// are in the store's order of preference.
func newItem(p string, c *content, encs []encoding, sibs []*content) *Item {
	it := &Item{
		Path:        p,
		Size:        c.size,
		ModTime:     c.mtime,
		ContentType: c.ctype,
		ETag:        c.etag,
		Body:        c.body,
		Version:     c.version,
	}
	for i, v := range sibs {
		if v == nil {
			continue
		}
		it.Variants = append(it.Variants, Variant{
			Encoding: encs[i].name,
			Size:     v.size,
			ModTime:  v.mtime,
			ETag:     v.etag,
			Body:     v.body,
		})
	}
	return it
}

// sameItem reports whether a and b are interchangeable: same metadata and
// the very same body slices (not merely equal bytes), so keeping a instead of
// b keeps no extra memory alive.
func sameItem(a, b *Item) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.Path != b.Path || a.Size != b.Size || !a.ModTime.Equal(b.ModTime) ||
		a.ContentType != b.ContentType || a.ETag != b.ETag || !sameBytes(a.Body, b.Body) ||
		len(a.Variants) != len(b.Variants) {
		return false
	}
	for i := range a.Variants {
		v, w := &a.Variants[i], &b.Variants[i]
		if v.Encoding != w.Encoding || v.Size != w.Size || !v.ModTime.Equal(w.ModTime) ||
			v.ETag != w.ETag || !sameBytes(v.Body, w.Body) {
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
