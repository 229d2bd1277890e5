// Package shard is a node's memory: an in-memory, immutable-per-item copy of
// (a share of) a directory tree, primed in parallel when the node starts,
// kept current by a file watcher, and bounded by a hard memory budget.
//
// It imports no Caddy package. The root package glues it to Caddy: it builds
// a Config from the handler's JSON, calls Start when the server starts (not
// in `caddy validate`), keeps the Store alive across reloads and serves HTTP
// from the Items it gets here.
//
// What the store serves is what Caddy's file_server serves on the same tree,
// short of anything outside the root: regular files and directories, and
// symbolic links whose target resolves inside the root, each served like its
// target under its own path (a file reached by several paths is several
// items, with the same bytes and ETag). A symbolic link whose target leaves
// the root (by "..", by an absolute target elsewhere, or through a chain of
// links) is never followed, and is not found, as are dangling links; all
// access to storage goes through the root (os.Root, or openat2 with
// RESOLVE_BENEATH on Linux), so nothing outside the root is ever opened or
// read. Absolute links are followed when their target's path starts with
// the root's (as configured, or with its own links resolved); see
// resolve.go. The walk does not enter a directory that is one of its own
// ancestors (by device and inode: a link to "." or ".." is not served, nor
// anything under it) nor cross more than 8 directory links on one path
// (maxDirLinks); lookups before priming is done, answered from storage, do
// follow such paths. Changes
// reached through a link (a link's target, the files under a directory
// link) are found by the periodic rescan only; changes to the link itself,
// and to the real files, by the watcher as well. Dotfiles are served, as
// Caddy's file_server serves them; hiding them is the handler's business.
// Devices, pipes and sockets are skipped.
package shard

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"
	"unsafe"

	"go.uber.org/zap"
)

// Item is one file: its metadata and, when resident, its bytes.
//
// An Item is immutable and safe to share between goroutines: a change on
// storage makes a new Item that replaces the old one in the Store, so a
// request that holds an Item never sees a mix of old and new bytes.
type Item struct {
	// First: a zero-size last field would be padded to 8 bytes.
	_ noCopy

	// Path is the item's slash-separated path relative to the root, with a
	// leading slash: "/css/site.css".
	Path string

	// Size is the length of the content in bytes.
	Size int64

	// mtime is the file's modification time on storage (ModTime,
	// SetModTime), in 8 bytes where a time.Time takes 24.
	mtime modTime

	// Tag is the hash of the content the ETag and Version are made of: the
	// same on every machine that holds the same bytes. 16 bytes in the
	// Item where the quoted ETag took 16 plus a 48-byte string. Zero: no
	// ETag. Set it with SetETag for an ETag from elsewhere.
	Tag Tag

	// ref is the first byte of Body (nil when there is none: Body is Size
	// bytes from there); or, in the few items that have chunks, variants
	// or anything else unusual (hasMore), their extension, which holds the
	// body pointer then. One 8-byte field for both, where a body slice and
	// a pointer to the extension took 32. An extension is shared by copies
	// (copyFields): replaced, never modified.
	ref unsafe.Pointer

	// ctype is the MIME type (ContentType), as its number in the process's
	// table of the types seen (ctype.go): 2 bytes where a string took 16.
	ctype ctypeID

	// flags: ownsBody, hasMore.
	flags itemFlags

	// kept: a store's record holds it, and its finalizer is off meanwhile
	// (Item.keep). Read and written under that store's mu only. An Item is
	// 64 bytes.
	kept bool
}

// itemFlags are an Item's flags.
type itemFlags uint8

const (
	// ownsBody: the Item's Body is arena memory allocated for it, retired
	// by the Item's finalizer (Item.ownBody). Copies keep the Item.
	ownsBody itemFlags = 1 << iota

	// hasMore: ref is the Item's extension (*itemMore).
	hasMore
)

// more is it's extension, nil if it has none.
func (it *Item) more() *itemMore {
	if it.flags&hasMore != 0 {
		return (*itemMore)(it.ref)
	}
	return nil
}

// bodyPtr is the first byte of it's Body, nil if it has none.
func (it *Item) bodyPtr() *byte {
	if m := it.more(); m != nil {
		return m.body
	}
	return (*byte)(it.ref)
}

// setBodyPtr sets the first byte of it's Body (an Item being built).
func (it *Item) setBodyPtr(p *byte) {
	if it.flags&hasMore == 0 {
		it.ref = unsafe.Pointer(p)
		return
	}
	m := it.ext()
	m.body = p
	it.setExt(m)
}

// itemMore is what an Item larger than ChunkSize, or with precompressed
// siblings, holds besides the common fields.
type itemMore struct {
	body     *byte // the first byte of Body, as Item.ref in an Item without an extension
	chunks   Chunks
	variants []Variant
	etag     string    // an ETag that is not a quoted Tag (SetETag); "" if none
	mtime    time.Time // a ModTime that int64 nanoseconds cannot hold (farTime)
	ctype    string    // a ContentType past the table's room (ctypeOther)
	keep     keeper    // what keeps the arena memory of Body or Chunks in use, unless the Item owns its Body
}

// ext returns a copy of it's extension, to change and set with setExt.
func (it *Item) ext() itemMore {
	if m := it.more(); m != nil {
		return *m
	}
	return itemMore{body: (*byte)(it.ref)}
}

// setExt sets it's extension to m: a new one, as a copy may share the old.
func (it *Item) setExt(m itemMore) {
	if m.chunks == nil && m.variants == nil && m.etag == "" && m.mtime.IsZero() && m.ctype == "" && m.keep == (keeper{}) {
		it.ref = unsafe.Pointer(m.body)
		it.flags &^= hasMore
		return
	}
	it.ref = unsafe.Pointer(&m)
	it.flags |= hasMore
}

// Chunks holds the content of a resident item larger than ChunkSize, in
// ChunkSize pieces; nil otherwise. Never modify it.
func (it *Item) Chunks() Chunks {
	if m := it.more(); m != nil {
		return m.chunks
	}
	return nil
}

// Variants are the precompressed siblings (x.css.br, x.css.gz, x.css.zst)
// of this item, in the Store's preference order. They are never items of
// their own. Never modify them.
func (it *Item) Variants() []Variant {
	if m := it.more(); m != nil {
		return m.variants
	}
	return nil
}

// Variant returns the variant in encoding enc, nil if there is none.
func (it *Item) Variant(enc string) *Variant {
	vs := it.Variants()
	for i := range vs {
		if vs[i].Encoding == enc {
			return &vs[i]
		}
	}
	return nil
}

// SetChunks sets the chunks of an Item being built, before anyone else
// sees it.
func (it *Item) SetChunks(c Chunks) {
	m := it.ext()
	m.chunks = c
	it.setExt(m)
}

// SetVariants sets the variants of an Item being built, before anyone else
// sees it.
func (it *Item) SetVariants(vs []Variant) {
	m := it.ext()
	m.variants = vs
	it.setExt(m)
}

// otherETag is the ETag set by SetETag that is not a quoted Tag, "" if none.
func (it *Item) otherETag() string {
	if m := it.more(); m != nil {
		return m.etag
	}
	return ""
}

// noCopy makes go vet's copylocks check flag copies of the struct that
// holds it.
type noCopy struct{}

func (*noCopy) Lock()   {}
func (*noCopy) Unlock() {}

// Variant is a precompressed encoding of an Item, stored beside it on disk.
// Immutable, like Item.
type Variant struct {
	// Encoding is the Content-Encoding token: "br", "gzip" or "zstd".
	Encoding string

	// Size is the length of the compressed bytes.
	Size int64

	// ModTime is the sibling file's modification time.
	ModTime time.Time

	// ETag is a strong entity tag of the compressed bytes.
	ETag string

	// Body holds the compressed bytes when resident and at most ChunkSize
	// bytes long; nil when not.
	Body []byte

	// Chunks holds the compressed bytes of a resident variant larger than
	// ChunkSize; nil otherwise.
	Chunks Chunks

	keep keeper // what keeps the arena memory of Body or Chunks in use
}

// Tag is a content hash: the first 16 bytes of the content's SHA-256 (128
// bits are plenty to tell versions apart).
type Tag [16]byte

// tagOf parses a Version: 32 lower-case hex digits.
func tagOf(v string) (t Tag, ok bool) {
	if len(v) != 2*len(t) {
		return t, false
	}
	for i := range v {
		c := v[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		default:
			return Tag{}, false
		}
		t[i/2] |= d << (4 * (1 - i%2))
	}
	return t, true
}

// appendHex appends t in lower-case hex.
func (t Tag) appendHex(b []byte) []byte { return hex.AppendEncode(b, t[:]) }

// ETag is the item's strong entity tag: its Tag in hex, quoted (or what
// SetETag was given, if that was not one).
func (it *Item) ETag() string {
	if e := it.otherETag(); e != "" || it.Tag == (Tag{}) {
		return e
	}
	var b [2 + 2*len(Tag{})]byte
	return string(it.AppendETag(b[:0]))
}

// AppendETag appends the item's ETag to b: with room for 34 bytes in b,
// without allocating.
func (it *Item) AppendETag(b []byte) []byte {
	if e := it.otherETag(); e != "" || it.Tag == (Tag{}) {
		return append(b, e...)
	}
	b = append(b, '"')
	b = it.Tag.appendHex(b)
	return append(b, '"')
}

// SetETag sets the ETag of an Item being built, before anyone else sees
// it: a quoted Version goes into Tag; anything else (an item built
// elsewhere, a test's "v1", none: "") is kept as given, and Tag is zero. A
// zero Tag stands for no ETag, so the (never seen) hash of 16 zero bytes is
// kept as given too.
func (it *Item) SetETag(etag string) {
	if len(etag) >= 2 && etag[0] == '"' && etag[len(etag)-1] == '"' {
		if t, ok := tagOf(etag[1 : len(etag)-1]); ok && t != (Tag{}) {
			it.Tag = t
			etag = ""
		}
	}
	if etag != "" {
		it.Tag = Tag{}
	}
	if etag != it.otherETag() {
		m := it.ext()
		m.etag = etag
		it.setExt(m)
	}
}

// SetETagOf gives an Item being built the ETag of src (an item of the same
// version: a chunk or hot copy of it).
func (it *Item) SetETagOf(src *Item) {
	it.Tag = src.Tag
	if e := src.otherETag(); e != it.otherETag() {
		m := it.ext()
		m.etag = e
		it.setExt(m)
	}
}

// Version is the hex content hash the ETag is built from (the ETag without
// its quotes); it names this version of the item in versioned keys
// ("path@version"). It allocates: compare versions with HasVersion and
// SameVersion.
func (it *Item) Version() string {
	if e := it.otherETag(); e != "" {
		if len(e) < 2 {
			return ""
		}
		return e[1 : len(e)-1]
	}
	if it.Tag == (Tag{}) {
		return "" // no ETag
	}
	return string(it.Tag.appendHex(make([]byte, 0, 2*len(Tag{}))))
}

// HasVersion reports whether v is the item's Version, without allocating.
func (it *Item) HasVersion(v string) bool {
	if e := it.otherETag(); e != "" {
		return len(e) >= 2 && e[1:len(e)-1] == v
	}
	if it.Tag == (Tag{}) {
		return v == "" // no ETag
	}
	t, ok := tagOf(v)
	return ok && t == it.Tag
}

// SameVersion reports whether a and b have the same Version.
func SameVersion(a, b *Item) bool { return a.Tag == b.Tag && a.otherETag() == b.otherETag() }

// modTime is a modification time in unix nanoseconds, 0 for the zero time.
type modTime int64

const (
	epochTime = modTime(math.MinInt64)     // the Unix epoch itself
	farTime   = modTime(math.MinInt64 + 1) // before 1678 or after 2262: in the extension
)

// ModTime is the file's modification time on storage.
func (it *Item) ModTime() time.Time {
	switch it.mtime {
	case 0:
		return time.Time{}
	case epochTime:
		return time.Unix(0, 0)
	case farTime:
		if m := it.more(); m != nil {
			return m.mtime
		}
		return time.Time{}
	}
	return time.Unix(0, int64(it.mtime))
}

// SetModTime sets the ModTime of an Item being built, before anyone else
// sees it.
func (it *Item) SetModTime(t time.Time) {
	far := time.Time{}
	switch n := t.UnixNano(); {
	case t.IsZero():
		it.mtime = 0
	case n == 0:
		it.mtime = epochTime
	case n == int64(epochTime) || n == int64(farTime) || !time.Unix(0, n).Equal(t):
		it.mtime, far = farTime, t
	default:
		it.mtime = modTime(n)
	}
	if !far.Equal(it.ext().mtime) {
		m := it.ext()
		m.mtime = far
		it.setExt(m)
	}
}

// SameModTime reports whether a and b have the same ModTime.
func SameModTime(a, b *Item) bool {
	if a.mtime != farTime || b.mtime != farTime {
		return a.mtime == b.mtime
	}
	return a.ModTime().Equal(b.ModTime())
}

// Body holds the content when the item is resident in memory and at most
// ChunkSize bytes long; nil when it is not resident (over the memory budget,
// or a transient item of a file over 1 MiB read on demand: read it with
// Store.Open) or held in Chunks. Never modify it.
func (it *Item) Body() []byte {
	p := it.bodyPtr()
	if p == nil {
		return nil
	}
	return unsafe.Slice(p, it.Size)
}

// SetBody sets the Body of an Item being built, before anyone else sees
// it: b (nil for none) must be Size bytes long; else SetBody reports an
// error and leaves the Item as it was.
func (it *Item) SetBody(b []byte) error {
	if b != nil && int64(len(b)) != it.Size {
		return fmt.Errorf("a body of %d bytes for an item of %d", len(b), it.Size)
	}
	it.dropOwnBody() // an arena body it owned: nobody saw it
	it.setBodyPtr(unsafe.SliceData(b))
	return nil
}

// Resident reports whether the item's bytes are held in memory.
func (it *Item) Resident() bool { return it.bodyPtr() != nil || it.Chunks() != nil || it.Size == 0 }

// Config configures a Store.
type Config struct {
	// Root is the directory whose files the store holds. Required.
	Root string

	// Memory is the hard budget, in bytes, for item bodies (and their
	// variants) held in memory. 0 means no limit. Files that do not fit are
	// still hashed and listed, and are served from storage through Open;
	// priming gives the budget to the smallest files first. Transient items
	// (read on demand, not kept by the store) are not counted.
	Memory int64

	// Precompressed lists the encodings whose sibling files are attached to
	// the items they compress, in order of preference: "br" (.br), "zstd"
	// (.zst), "gzip" (.gz). Siblings of encodings not listed are ordinary
	// items.
	Precompressed []string

	// Owns reports whether this node owns the item at path (for the
	// cluster). Items it does not own are neither primed nor published;
	// Lookup still answers them, from storage. A precompressed sibling
	// follows the item it compresses. nil means the node owns everything.
	// It is called with the store's lock held: it must be fast and must not
	// call the Store. Its answers must stay the same until Store.SetOwns
	// replaces it (a ring change), which drops what is no longer owned and
	// loads what newly is.
	Owns func(path string) bool

	// OnDrop, if not nil, is called with each published item (bytes and
	// Variants included) that SetOwns drops because this node no longer
	// owns it, before the store lets go of it, so that the caller can keep
	// serving it for a while (a handoff to its new owner). It is called
	// from the updater goroutine, with no lock of the store held. It is not
	// called for files removed from storage.
	OnDrop func(it *Item)

	// Handoff, if not nil, is asked for each file this node newly needs
	// after SetOwns (an item it now owns, or a precompressed sibling of one:
	// variants are files of their own here), with the size and modification
	// time storage shows for it. It returns the data as the previous holder
	// has it (Body or Chunks, Size, ModTime, Version; Variants are ignored),
	// or false. The store takes it only if Size and ModTime match storage
	// and the bytes hash to Version; otherwise, or when the memory budget
	// cannot hold the bytes, it reads the file from storage. The store
	// derives ContentType and ETag itself. Calls come from up to Workers
	// goroutines in parallel, with no lock of the store held.
	Handoff func(ctx context.Context, path string, size int64, modTime time.Time) (*Item, bool)

	// Workers is the number of files read in parallel while priming.
	// 0 means a sensible default.
	Workers int

	// Rescan is how often the tree is walked again to catch changes the
	// file watcher missed (or to replace it on filesystems that do not
	// notify). 0 means a sensible default.
	Rescan time.Duration

	// Logger receives progress and warnings. nil means no logs.
	Logger *zap.Logger

	// OnChange, if not nil, is called after an item was created or changed
	// on storage (it is the new item) or removed (it is nil), so that the
	// cluster can publish the delta. It is not called for the initial
	// priming: once the store is Ready, take a snapshot with Each; every
	// change after that is reported here. Calls come from one goroutine, in
	// order, with no lock of the store held (OnChange may call Lookup).
	OnChange func(path string, it *Item)
}

// ErrNotFound is returned for a path that names no item.
var ErrNotFound = errors.New("shard: not found")

// ErrChanged is returned (wrapped) by Store.Open when the file on storage no
// longer matches the Item it was asked for: the caller should look the path
// up again.
var ErrChanged = errors.New("shard: changed on storage")

// ErrClosed is returned by a Store that was closed.
var ErrClosed = errors.New("shard: store closed")
