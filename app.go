package shardcache

import (
	"sync"

	"github.com/caddyserver/caddy/v2"

	"github.com/shardcache/caddy-shardcache/shard"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the shardcache node: one per process. Handlers reach it with
// ctx.App("shardcache"); it starts their stores' priming when the server
// starts, so that `caddy validate`, which provisions but never starts,
// reads no file.
type App struct {
	mu     sync.Mutex
	stores []*shard.Store
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "shardcache",
		New: func() caddy.Module { return new(App) },
	}
}

// addStore registers a store to start with the app. Called from handlers'
// Provision.
func (a *App) addStore(s *shard.Store) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stores = append(a.stores, s)
}

// Start starts priming every store of this config. A store kept from the
// previous config (same root, same budget) is already primed or priming;
// starting it again does nothing.
func (a *App) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.stores {
		s.Start()
	}
	return nil
}

// Stop does nothing: the stores live in a usage pool and are closed by the
// last handler that releases them.
func (a *App) Stop() error { return nil }

// Interface guards
var (
	_ caddy.App = (*App)(nil)
)
