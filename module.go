package shardcache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/encode"

	"github.com/shardcache/caddy-shardcache/cluster"
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
	grp    *cluster.Group // nil on a single node
	stats  *cluster.Stats
	logger *zap.Logger

	life  *lifetime
	epoch uint64 // the ring epoch a store made by this handler starts with
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
		if c.Observer() {
			return errors.New("this Caddy is a cluster observer (a content director): it serves no shardcache content")
		}
		if h.Group == "" {
			h.Group = h.Root
		}
		if h.Hot == 0 {
			h.Hot = h.Memory / 4
		}
		// Only a lookup: the group's store and hot budget change when the
		// config is committed (App.Start), never here.
		h.grp = c.Group(h.Group)
		group, cl := h.Group, c.Cluster
		cfg.Owns = app.members.Owns
		cfg.OnChange = func(p string, it *shard.Item) { cl.Publish(group, p, it) }
		// A ring change keeps the store: the cluster has it drop what this
		// node no longer holds and load what it newly holds, from the
		// previous holders' memory first.
		cfg.OnDrop = func(it *shard.Item) { cl.Dropped(group, it) }
		cfg.Handoff = func(ctx context.Context, p string, size int64, mtime time.Time) (*shard.Item, bool) {
			return cl.Handoff(ctx, group, p, size, mtime)
		}
		key += fmt.Sprintf("|%s|%s", group, c.Name())
		h.epoch = app.members.Epoch()
	}
	val, _, err := stores.LoadOrNew(key, func() (caddy.Destructor, error) {
		s, err := shard.New(cfg)
		if err != nil {
			return nil, err
		}
		return storeRef{s, new(cluster.Stats)}, nil
	})
	if err != nil {
		return fmt.Errorf("root %q: %v", h.Root, err)
	}
	h.life = &lifetime{key: key, logger: h.logger}
	ref := val.(storeRef)
	h.store, h.stats = ref.Store, ref.stats
	src := source{name: h.Root, budget: h.Memory, store: h.store, stats: h.stats}
	if h.grp != nil {
		h.stats = h.grp.Stats()
		src = source{name: h.Group, budget: h.Memory + h.Hot, hot: h.Hot, store: h.store, stats: h.stats, grp: h.grp, epoch: h.epoch}
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
	stats *cluster.Stats
}

func (r storeRef) Destruct() error { return r.Close() }

// ServeHTTP serves the file the request names: from this node's memory,
// from the hot cache, from the owner's memory over the SAN, or from storage.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	h.life.enter()
	defer h.life.leave()
	// Body slices this request gets (from the store, the hot cache, a
	// chunk) stay valid until it returns, even if their items leave
	// memory meanwhile.
	rd := shard.BeginRead()
	defer rd.End()
	reqPath := r.URL.Path
	if strings.IndexByte(reqPath, 0) >= 0 {
		return caddyhttp.Error(http.StatusBadRequest, errors.New("NUL byte in path"))
	}
	name := cleanPath(reqPath)

	res, err := h.resolve(name)
	implicitIndex := false
	if err == nil && res.IsDir || errors.Is(err, shard.ErrNotFound) && h.grp != nil {
		// A directory: serve its index. (In a cluster the table of content
		// lists files only, so a name it does not know may be a directory.)
		res, err = cluster.Resolved{}, shard.ErrNotFound
		for _, index := range h.IndexNames {
			ip := path.Join(name, index)
			ires, ierr := h.resolve(ip)
			if ierr == nil && !ires.IsDir {
				res, name, implicitIndex, err = ires, ip, true, nil
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

	it := res.Item
	enc := h.encoding(r, it)
	var resp response
	prepare(&resp, w, r, it, enc)
	if res.Remote == nil {
		tier := cluster.TierLocal
		if res.Storage {
			tier = cluster.TierStorage
		}
		return h.serveLocal(w, r, &resp, name, tier)
	}

	// Another node holds it. HEAD, 304 and 412 need no bytes: answered
	// from the table of content.
	if !resp.needsBody(r) {
		h.stats.Count(cluster.TierMeta, 0)
		return h.write(w, r, &resp, cluster.Body{}, name)
	}
	b, err := h.grp.Open(h.store, res.Remote, enc, resp.rangeHdr)
	if err != nil {
		resp.undo(w.Header())
		// The file exists (its holder listed it) but neither the holder
		// nor this node's storage can supply it now: a gateway error, not
		// a 404, so that no cache or client takes it for gone.
		return caddyhttp.Error(http.StatusBadGateway,
			fmt.Errorf("%s: owner %s unavailable and not readable from this node's storage: %w", it.Path, res.Remote.Owner, err))
	}
	defer b.Close()
	return h.write(w, r, &resp, b, name)
}

// resolve finds the item at path: in this node's store on a single node,
// else through the group (this node's store for what it holds, the table
// of content for the rest, its storage when no table is trusted).
func (h *Handler) resolve(p string) (cluster.Resolved, error) {
	if h.grp == nil {
		it, isDir, err := h.store.Lookup(p)
		return cluster.Resolved{Item: it, IsDir: isDir}, err
	}
	return h.grp.Resolve(h.store, p)
}

// encoding picks the precompressed variant of it to send, "" for none.
func (h *Handler) encoding(r *http.Request, it *shard.Item) string {
	if len(it.Variants()) == 0 || len(r.Header["Accept-Encoding"]) == 0 {
		return ""
	}
	for _, ae := range encode.AcceptedEncodings(r, h.Precompressed) {
		if it.Variant(ae) != nil {
			return ae
		}
	}
	return ""
}

// serveLocal serves an item of this node's store.
// tier is where the item came from: this node's memory (TierLocal) or,
// for a path another node holds, its storage.
func (h *Handler) serveLocal(w http.ResponseWriter, r *http.Request, resp *response, name string, tier cluster.Tier) error {
	it, enc := resp.it, resp.enc
	if !resp.needsBody(r) {
		h.stats.Count(cluster.TierMeta, 0)
		return h.write(w, r, resp, cluster.Body{}, name)
	}
	b := cluster.Body{Item: it, Enc: enc, Tier: tier}
	var size int64
	b.Data, b.Chunks, size, _ = cluster.HeldBytes(it, enc)
	if b.Data == nil && b.Chunks == nil && size > 0 {
		// Not held in memory: serve it from storage.
		f, err := h.store.Open(it, enc)
		if err != nil {
			if errors.Is(err, shard.ErrChanged) {
				// The file changed between lookup and open: look again.
				nit, isDir, lerr := h.store.Lookup(it.Path)
				if lerr == nil && !isDir && nit != it {
					return h.serveLocal(w, r, prepareAgain(w, r, nit, h.encoding(r, nit)), name, tier)
				}
			}
			resp.undo(w.Header())
			return caddyhttp.Error(http.StatusInternalServerError, err)
		}
		defer f.Close()
		b.File, b.Tier = f, cluster.TierStorage
	}
	h.stats.Count(b.Tier, size)
	return h.write(w, r, resp, b, name)
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

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
