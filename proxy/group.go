package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Server is what a Group runs: a Listener, a protocol front, an admin server.
type Server interface {
	// Start begins serving in the background and returns once it is listening.
	Start(ctx context.Context) error
	// Shutdown stops accepting, drains until ctx ends, then closes what is left.
	Shutdown(ctx context.Context) error
}

// Group starts servers together and drains them together under one deadline.
type Group struct {
	mu      sync.Mutex
	names   []string
	servers []Server
	started int
}

// Add registers s under name (used in errors). Add before Start.
func (g *Group) Add(name string, s Server) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.names = append(g.names, name)
	g.servers = append(g.servers, s)
}

// Start starts the servers in the order they were added. If one fails, those already started are
// shut down (bounded by ctx) and the error names the one that failed.
func (g *Group) Start(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := g.started; i < len(g.servers); i++ {
		if err := g.servers[i].Start(ctx); err != nil {
			serr := g.shutdownLocked(ctx)
			return errors.Join(fmt.Errorf("starting %s: %w", g.names[i], err), serr)
		}
		g.started = i + 1
	}
	return nil
}

// Shutdown drains every started server at once; ctx's deadline is the one drain deadline for all.
// Each server force-closes its connections when ctx ends. The errors name their server.
func (g *Group) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.shutdownLocked(ctx)
}

func (g *Group) shutdownLocked(ctx context.Context) error {
	n := g.started
	g.started = 0
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.servers[i].Shutdown(ctx); err != nil {
				errs[i] = fmt.Errorf("shutting down %s: %w", g.names[i], err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
