package shardcache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/encode"

	"github.com/shardcache/caddy-shardcache/shard"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// DefaultMemory is the memory budget of a handler that sets none: 1 GiB.
const DefaultMemory = 1 << 30

// Handler serves a directory from RAM. When the server starts, it reads the
// files under Root into memory in parallel ("priming"), up to a hard memory
// budget, and from then on answers GET and HEAD requests from memory with the
// same semantics as Caddy's `file_server`: Range and multi-range requests,
// conditional requests (`If-None-Match`, `If-Modified-Since`, `If-Range`, ...),
// precompressed sidecar files chosen by `Accept-Encoding`, index files and
// canonical trailing-slash redirects.
//
// The ETag is a strong validator built from a hash of the content, so it is
// the same on every machine that holds the same bytes (file_server's is
// built from the modification time and size).
//
// Until priming has finished, a request for a file not yet in memory is
// answered from storage. Files that do not fit in the budget are served
// from storage on every request without being held. Files created, changed
// or removed under Root are picked up within about a second (a file watcher,
// backed by a periodic rescan).
//
// Two sites (or two handlers) with the same root, budget and precompressed
// list share one copy in memory, and a config reload that keeps them keeps
// the primed memory: nothing is read again.
type Handler struct {
	// The directory whose files are served. Required. Placeholders are not
	// supported: the directory is read once, when the server starts.
	Root string `json:"root,omitempty"`

	// The hard limit, in bytes, on the file contents held in memory
	// (precompressed siblings included). Files that do not fit are served
	// from storage. Default: 1 GiB.
	Memory int64 `json:"memory,omitempty"`

	// The names of files to serve when a directory is requested, in order
	// of preference. Default: `["index.html"]`.
	IndexNames []string `json:"index_names,omitempty"`

	// The encodings whose precompressed sidecar files (`x.css.br`,
	// `x.css.zst`, `x.css.gz`) are attached to the file they compress and
	// served to clients that accept them. Their order is the server's
	// preference when the client's `Accept-Encoding` weighs them equally.
	// Supported: `br`, `zstd`, `gzip`. Default: none (sidecars are served
	// as ordinary files, as file_server does).
	Precompressed []string `json:"precompressed,omitempty"`

	// If true, a request for a path that names no file is passed to the
	// next handler instead of being answered with 404.
	PassThru bool `json:"pass_thru,omitempty"`

	// In a cluster: the hard limit, in bytes, on copies of other nodes'
	// items kept on this node because they are requested often. 0 means
	// the default: a quarter of memory. Ignored on a single node.
	Hot int64 `json:"hot,omitempty"`

	// In a cluster: the name of the content tree, the same on every node.
	// Default: the root as written in the config. Set it when the nodes
	// mount the content at different paths.
	Group string `json:"group,omitempty"`

	store  *shard.Store
	grp    *group // nil on a single node
	stats  *tierStats
	logger *zap.Logger

	life *lifetime
}

// lifetime holds a handler's reference to its store until the handler's
// config is cleaned up and the last request it is serving has finished:
// on a reload Caddy cleans the old config up without waiting for the old
// servers' requests (their grace period runs on in the background), and
// those must not find their store closed.
type lifetime struct {
	key      string // the store's usage pool key
	active   atomic.Int64
	released atomic.Bool
	once     sync.Once
	logger   *zap.Logger
}

// enter starts a request.
func (l *lifetime) enter() { l.active.Add(1) }

// leave ends a request: the last one out after the cleanup releases the
// store.
func (l *lifetime) leave() {
	if l.active.Add(-1) == 0 && l.released.Load() {
		l.release()
	}
}

// cleanup marks the config gone, and releases the store now if no request
// is being served.
func (l *lifetime) cleanup() {
	l.released.Store(true)
	if l.active.Load() == 0 {
		l.release()
	}
}

// release drops the reference to the store in the usage pool, once.
func (l *lifetime) release() {
	l.once.Do(func() {
		if _, err := stores.Delete(l.key); err != nil {
			l.logger.Error("closing the store", zap.String("key", l.key), zap.Error(err))
		}
	})
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.shardcache",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up h: defaults, then the shared store. It reads no file
// (it also runs for `caddy validate`); the shardcache app starts priming
// when the server starts.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.Memory == 0 {
		h.Memory = DefaultMemory
	}
	if h.IndexNames == nil {
		h.IndexNames = []string{"index.html"}
	}
	if err := h.Validate(); err != nil {
		return err
	}

	appVal, err := ctx.App("shardcache")
	if err != nil {
		return fmt.Errorf("loading shardcache app: %v", err)
	}
	app := appVal.(*App)

	cfg := shard.Config{
		Root:          h.Root,
		Memory:        h.Memory,
		Precompressed: h.Precompressed,
		// The store outlives this config (usage pool), so it logs to the
		// process's default logger rather than to this config's.
		Logger: caddy.Log().Named("shardcache"),
	}
	key := fmt.Sprintf("store|%s|%d|%s", cfg.Root, cfg.Memory, strings.Join(cfg.Precompressed, ","))
	if c := app.cluster; c != nil {
		if c.cfg.observer {
			return errors.New("this Caddy is a cluster observer (a content director): it serves no shardcache content")
		}
		if h.Group == "" {
			h.Group = h.Root
		}
		if h.Hot == 0 {
			h.Hot = h.Memory / 4
		}
		h.grp = c.group(h.Group)
		group := h.Group
		cfg.Owns = app.members.owns
		cfg.OnChange = func(p string, it *shard.Item) { c.publish(group, p, it) }
		// The store primes this node's share: it depends on the ring.
		key += fmt.Sprintf("|%s|%s|%d", group, c.cfg.name, app.members.epoch())
	}
	val, _, err := stores.LoadOrNew(key, func() (caddy.Destructor, error) {
		s, err := shard.New(cfg)
		if err != nil {
			return nil, err
		}
		return storeRef{s, new(tierStats)}, nil
	})
	if err != nil {
		return fmt.Errorf("root %q: %v", h.Root, err)
	}
	h.life = &lifetime{key: key, logger: h.logger}
	ref := val.(storeRef)
	h.store, h.stats = ref.Store, ref.stats
	src := source{name: h.Root, budget: h.Memory, store: h.store, stats: h.stats}
	if h.grp != nil {
		h.grp.store.Store(h.store)
		h.grp.setHot(h.Hot)
		h.stats = &h.grp.stats
		src = source{name: h.Group, budget: h.Memory + h.Hot, store: h.store, stats: h.stats, grp: h.grp}
	}
	app.addSource(src)
	return nil
}

// Validate checks h's configuration. It does not change h.
func (h *Handler) Validate() error {
	if h.Root == "" {
		return errors.New("root is required")
	}
	if h.Memory < 0 {
		return fmt.Errorf("memory %d: must not be negative", h.Memory)
	}
	if h.Hot < 0 {
		return fmt.Errorf("hot %d: must not be negative", h.Hot)
	}
	seen := map[string]bool{}
	for _, enc := range h.Precompressed {
		if _, ok := encodingSuffix[enc]; !ok {
			return fmt.Errorf("precompressed %q: unsupported encoding (supported: br, zstd, gzip)", enc)
		}
		if seen[enc] {
			return fmt.Errorf("precompressed %q: listed twice", enc)
		}
		seen[enc] = true
	}
	for _, name := range h.IndexNames {
		if name == "" || strings.Contains(name, "/") {
			return fmt.Errorf("index %q: must be a file name", name)
		}
	}
	return nil
}

// Cleanup releases h's reference to the shared store, once the requests h
// is still serving have finished; the store is closed when no config uses
// it any more.
func (h *Handler) Cleanup() error {
	if h.life != nil {
		h.life.cleanup()
	}
	return nil
}

// encodingSuffix maps the supported Content-Encodings to their sidecar
// file suffixes.
var encodingSuffix = map[string]string{"br": ".br", "zstd": ".zst", "gzip": ".gz"}

// stores keeps primed stores alive across config reloads, keyed by
// everything that decides their contents.
var stores = caddy.NewUsagePool()

// storeRef lets a *shard.Store live in a caddy.UsagePool, with the counters
// of the requests it serves on a single node.
type storeRef struct {
	*shard.Store
	stats *tierStats
}

func (r storeRef) Destruct() error { return r.Close() }

// ServeHTTP serves the file the request names: from this node's memory,
// from the hot cache, from the owner's memory over the SAN, or from storage.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	h.life.enter()
	defer h.life.leave()
	reqPath := r.URL.Path
	if strings.IndexByte(reqPath, 0) >= 0 {
		return caddyhttp.Error(http.StatusBadRequest, errors.New("NUL byte in path"))
	}
	name := cleanPath(reqPath)

	it, owner, isDir, err := h.lookup(name)
	implicitIndex := false
	if err == nil && isDir || errors.Is(err, shard.ErrNotFound) && h.grp != nil {
		// A directory: serve its index. (In a cluster the table of content
		// lists files only, so a name it does not know may be a directory.)
		it, err = nil, shard.ErrNotFound
		for _, index := range h.IndexNames {
			ip := path.Join(name, index)
			iit, iowner, iisDir, ierr := h.lookup(ip)
			if ierr == nil && !iisDir {
				it, owner, name, implicitIndex, err = iit, iowner, ip, true, nil
				break
			}
		}
	}
	if err != nil {
		if errors.Is(err, shard.ErrNotFound) {
			return h.notFound(w, r, next)
		}
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}

	// Canonical URIs, as file_server does: a directory's index is served at
	// a path with a trailing slash, a file at one without. Only when the
	// last path element was not rewritten, to never cause redirect loops.
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok &&
		path.Base(orig.URL.Path) == path.Base(reqPath) {
		if implicitIndex && !strings.HasSuffix(orig.URL.Path, "/") {
			return redirect(w, r, orig.URL.Path+"/")
		} else if !implicitIndex && strings.HasSuffix(orig.URL.Path, "/") {
			return redirect(w, r, orig.URL.Path[:len(orig.URL.Path)-1])
		}
	}

	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// In an error route we are writing an error page: don't repeat
		// the error.
		if _, ok := r.Context().Value(caddyhttp.ErrorCtxKey).(error); !ok {
			hdr := w.Header()
			hdr.Add("Vary", "Accept-Encoding") // as file_server
			hdr["Allow"] = allowGetHead
			return caddyhttp.Error(http.StatusMethodNotAllowed, nil)
		}
	}

	enc := h.encoding(r, it)
	if owner == nil {
		return h.serveLocal(w, r, it, enc, name)
	}

	// Another node owns it. HEAD, 304 and 412 need no bytes: answer them
	// from the table of content.
	if r.Method == http.MethodHead || !needsBody(r, it, enc) {
		h.stats.local.Add(1)
		return h.write(w, r, body{it: it, enc: enc}, name)
	}
	var b body
	if sizeOf(it, enc) > shard.ChunkSize {
		b, err = h.grp.fetchChunked(owner, enc, r)
		if err != nil {
			b, err = h.grp.fromStorage(it.Path, enc)
		}
	} else {
		b, err = h.grp.fetch(owner, enc)
	}
	if err != nil {
		// The file exists (its owner listed it) but neither the owner nor
		// this node's storage can supply it now: a gateway error, not a
		// 404, so that no cache or client takes it for gone.
		return caddyhttp.Error(http.StatusBadGateway,
			fmt.Errorf("%s: owner %s unavailable and not readable from this node's storage: %w", it.Path, owner.owner, err))
	}
	if b.file != nil {
		defer b.file.Close()
	}
	return h.write(w, r, b, name)
}

// lookup finds the item at path: in this node's store when it owns the
// path (or runs alone), else in the table of content (owner set). When the
// table does not know the path and its owner is not connected and primed
// (so its table may be incomplete), storage answers.
func (h *Handler) lookup(p string) (it *shard.Item, owner *remoteItem, isDir bool, err error) {
	if h.grp == nil || h.grp.c.owns(p) {
		it, isDir, err = h.store.Lookup(p)
		return it, nil, isDir, err
	}
	if ri, ok := h.grp.lookup(p); ok {
		return ri.it, ri, false, nil
	}
	if h.grp.c.peerReady(h.grp.c.ring().Owner(p)) {
		return nil, nil, false, shard.ErrNotFound
	}
	it, isDir, err = h.store.Lookup(p)
	return it, nil, isDir, err
}

// encoding picks the precompressed variant of it to send, "" for none.
func (h *Handler) encoding(r *http.Request, it *shard.Item) string {
	if len(it.Variants) == 0 || len(r.Header["Accept-Encoding"]) == 0 {
		return ""
	}
	for _, ae := range encode.AcceptedEncodings(r, h.Precompressed) {
		if variant(it, ae) != nil {
			return ae
		}
	}
	return ""
}

// serveLocal serves an item of this node's store.
func (h *Handler) serveLocal(w http.ResponseWriter, r *http.Request, it *shard.Item, enc, name string) error {
	b := body{it: it, enc: enc, tier: "local"}
	var size int64
	b.data, b.chunks, size, _ = heldBytes(it, enc)
	if b.data == nil && b.chunks == nil && size > 0 {
		// Not held in memory: serve it from storage.
		f, err := h.store.Open(it, enc)
		if err != nil {
			if errors.Is(err, shard.ErrChanged) {
				// The file changed between lookup and open: look again.
				nit, isDir, lerr := h.store.Lookup(it.Path)
				if lerr == nil && !isDir && nit != it {
					return h.serveLocal(w, r, nit, h.encoding(r, nit), name)
				}
			}
			return caddyhttp.Error(http.StatusInternalServerError, err)
		}
		defer f.Close()
		b.file, b.tier = f, "storage"
	}
	if b.tier == "local" {
		h.stats.local.Add(1)
		h.stats.localBytes.Add(size)
	} else {
		h.stats.storage.Add(1)
		h.stats.storageBytes.Add(size)
	}
	return h.write(w, r, b, name)
}

// write sends b: its item's headers and, unless the request needs none,
// its bytes (b.data, or b.file, or none at all for HEAD and 304 answered
// from the table of content).
func (h *Handler) write(w http.ResponseWriter, r *http.Request, b body, name string) error {
	hdr := w.Header()
	it := b.it
	hv := headersOf(it, b.enc)
	// The values are the item's own strings, but each response gets its
	// own slices: the header directive's replace operations modify header
	// values in place.
	vals := headerVals()
	own := func(i int, v string) []string {
		vals[i] = v
		return vals[i : i+1 : i+1]
	}
	// file_server always adds this to file responses, compressed or not, so
	// that caches key on it.
	if v, set := hdr["Vary"]; set {
		hdr["Vary"] = append(v, "Accept-Encoding")
	} else {
		hdr["Vary"] = own(5, "Accept-Encoding")
	}
	if b.enc != "" {
		hdr["Content-Encoding"] = own(0, b.enc)
	} else {
		delete(hdr, "Content-Encoding")
	}
	// Let an ETag or Content-Type set by an earlier handler win, as
	// file_server does.
	if _, set := hdr["Etag"]; !set {
		hdr["Etag"] = own(1, hv.etag)
	}
	if _, set := hdr["Content-Type"]; !set {
		if hv.contentType != "" {
			hdr["Content-Type"] = own(2, hv.contentType)
		} else {
			hdr["Content-Type"] = nil // never let net/http sniff
		}
	}
	statusOverride := errorStatus(r)

	// The fast path: a plain GET or HEAD of bytes in memory goes out in one
	// write, with no parsing of conditional or Range headers, and no
	// allocation: the header values are the item's own.
	if b.file == nil && statusOverride == 0 && plainRequest(r) &&
		(b.data != nil || b.chunks != nil || b.remote != nil || hv.size == 0 || r.Method == http.MethodHead) {
		hdr["Accept-Ranges"] = own(3, "bytes")
		if hv.lastModified != "" {
			hdr["Last-Modified"] = own(4, hv.lastModified)
		}
		hdr["Content-Length"] = own(6, hv.contentLength)
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return nil
		}
		switch {
		case b.chunks != nil:
			_, _ = shard.NewChunksReader(b.chunks).WriteTo(w)
		case b.remote != nil:
			if _, err := b.remote.WriteTo(w); err != nil {
				h.cutShort(it, err)
			}
		default:
			_, _ = w.Write(b.data)
		}
		return nil
	}
	if b.enc != "" && r.Header.Get("Range") == "" {
		// net/http does not set Content-Length when Content-Encoding is
		// set (caddyserver/caddy#7040); file_server sets it too.
		hdr["Content-Length"] = []string{hv.contentLength}
	}
	var content io.ReadSeeker
	switch {
	case b.file != nil:
		content = b.file
	case b.chunks != nil:
		content = shard.NewChunksReader(b.chunks)
	case b.remote != nil:
		content = b.remote
	case b.data != nil || hv.size == 0:
		content = bytes.NewReader(b.data)
	default:
		content = noBody(hv.size) // HEAD, 304, 412: never read
	}
	http.ServeContent(overrideStatus(w, statusOverride), r, name, hv.modTime, content)
	if b.remote != nil && b.remote.err != nil {
		h.cutShort(it, b.remote.err)
	}
	return nil
}

// cutShort logs a response whose body could not be completed after its
// headers were sent: net/http closes the connection (the body is shorter
// than its Content-Length), so the client sees the failure and no cache
// keeps the partial body.
func (h *Handler) cutShort(it *shard.Item, err error) {
	h.logger.Error("response cut short: a chunk of a large item could not be fetched",
		zap.String("path", it.Path), zap.Error(err))
}

// headerVals returns room for the 7 header values of one response (each
// used as a slice of length and capacity 1, so that an append never reaches
// the next). They are cut from shared arrays of valsPerSlab responses, as
// net/textproto does for request headers: one allocation per valsPerSlab
// responses rather than one per response. An array lives as long as a
// header map still refers to any part of it.
func headerVals() []string {
	s := slabs.Get().(*valSlab)
	if len(s.vals) < 7 {
		s.vals = make([]string, 7*valsPerSlab)
	}
	v := s.vals[:7:7]
	s.vals = s.vals[7:]
	slabs.Put(s)
	return v
}

const valsPerSlab = 64

type valSlab struct{ vals []string }

var slabs = sync.Pool{New: func() any { return new(valSlab) }}

// itemHeaders are the response header values of one encoding of an item,
// built once.
type itemHeaders struct {
	etag, contentType, contentLength, lastModified string

	size    int64
	modTime time.Time // zero when not a useful validator
}

// headersOf returns the header values of it in encoding enc ("" identity,
// else one of it.Variants), building them on first use.
func headersOf(it *shard.Item, enc string) *itemHeaders {
	all, _ := it.Memo.Load().([]itemHeaders)
	if len(all) != 1+len(it.Variants) {
		all = make([]itemHeaders, 1+len(it.Variants))
		modTime := it.ModTime
		if u := modTime.Unix(); u == 0 || u == 1 { // as file_server: not a useful validator
			modTime = time.Time{}
		}
		lastModified := ""
		if !modTime.IsZero() {
			lastModified = modTime.UTC().Format(http.TimeFormat)
		}
		for i := range all {
			etag, size := it.ETag, it.Size
			if i > 0 {
				etag, size = it.Variants[i-1].ETag, it.Variants[i-1].Size
			}
			all[i] = itemHeaders{
				etag:          etag,
				contentType:   it.ContentType,
				contentLength: strconv.FormatInt(size, 10),
				lastModified:  lastModified,
				size:          size,
				modTime:       modTime,
			}
		}
		it.Memo.Store(all) // a concurrent first use builds the same values
	}
	if enc != "" {
		for i := range it.Variants {
			if it.Variants[i].Encoding == enc {
				return &all[i+1]
			}
		}
	}
	return &all[0]
}

// needsBody reports whether a GET of it must send bytes: false when the
// request's validators already tell a 304 (If-None-Match, or
// If-Modified-Since without If-None-Match).
func needsBody(r *http.Request, it *shard.Item, enc string) bool {
	etag := it.ETag
	if enc != "" {
		etag = variant(it, enc).ETag
	}
	if inm := r.Header.Get("If-None-Match"); inm != "" {
		for _, t := range strings.Split(inm, ",") {
			t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
			if t == "*" || t == strings.TrimPrefix(etag, "W/") {
				return false
			}
		}
		return true
	}
	if ims := r.Header.Get("If-Modified-Since"); ims != "" && !it.ModTime.IsZero() {
		if t, err := http.ParseTime(ims); err == nil && !it.ModTime.Truncate(time.Second).After(t) {
			return false
		}
	}
	return true
}

// noBody stands for bytes of a known size that are never read: it lets
// http.ServeContent answer HEAD and 304 from metadata alone.
type noBody int64

func (n noBody) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekEnd:
		return int64(n) + offset, nil
	default:
		return offset, nil
	}
}

func (noBody) Read([]byte) (int, error) { return 0, errors.New("shardcache: body not fetched") }

var allowGetHead = []string{"GET, HEAD"}

// plainRequest reports whether r carries none of the headers that make
// http.ServeContent do more than send the whole body.
func plainRequest(r *http.Request) bool {
	h := r.Header
	return len(h["Range"]) == 0 &&
		len(h["If-None-Match"]) == 0 &&
		len(h["If-Modified-Since"]) == 0 &&
		len(h["If-Match"]) == 0 &&
		len(h["If-Unmodified-Since"]) == 0
}

func (h *Handler) notFound(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.PassThru {
		return next.ServeHTTP(w, r)
	}
	return caddyhttp.Error(http.StatusNotFound, nil)
}

// cleanPath turns a request path into the store's form: slash-rooted,
// without "." or ".." elements, without a trailing slash (except "/").
// path.Clean resolves ".." lexically against the root, so no request path
// can name anything outside it; storage access itself goes through os.Root
// as a second line of defence.
func cleanPath(p string) string {
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	// Fast path: most request paths are already clean.
	if !strings.Contains(p, "/.") && !strings.Contains(p, "//") && (len(p) == 1 || p[len(p)-1] != '/') {
		return p
	}
	return path.Clean(p)
}

// redirect sends a permanent redirect to toPath on the same origin, keeping
// the query string, exactly as file_server's canonical-URI redirects do.
func redirect(w http.ResponseWriter, r *http.Request, toPath string) error {
	for strings.HasPrefix(toPath, "//") {
		toPath = strings.TrimPrefix(toPath, "/") // no open redirects
	}
	if r.URL.RawQuery != "" {
		toPath += "?" + r.URL.RawQuery
	}
	http.Redirect(w, r, toPath, http.StatusPermanentRedirect)
	return nil
}

// errorStatus returns the status of the error being handled when the
// handler runs in an error route (to serve an error page), else 0.
func errorStatus(r *http.Request) int {
	reqErr, ok := r.Context().Value(caddyhttp.ErrorCtxKey).(error)
	if !ok {
		return 0
	}
	var herr caddyhttp.HandlerError
	if errors.As(reqErr, &herr) && herr.StatusCode > 0 {
		return herr.StatusCode
	}
	return http.StatusInternalServerError
}

// overrideStatus wraps w so that a 200 from http.ServeContent becomes code,
// when code is not 0.
func overrideStatus(w http.ResponseWriter, code int) http.ResponseWriter {
	if code == 0 {
		return w
	}
	return statusWriter{ResponseWriter: w, code: code}
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s statusWriter) WriteHeader(int) { s.ResponseWriter.WriteHeader(s.code) }

func (s statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
