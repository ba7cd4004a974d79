package aws

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
)

// A client beside the proxy that loads the same temporary credentials (an instance or task role)
// signs with them, and the proxy verifies with its own. Both refresh them on their own schedules:
// the proxy's cache minutes before expiry, an SDK at expiry or earlier, so for minutes around
// every rotation one side holds the new pair and the other the old. AWS takes both until the old
// one expires; the proxy takes a previous pair of its own until then, and, when a client signs
// with a temporary key it does not know, loads its credentials again (at most once in 10 s) in
// case the role's have rotated under it.

// ownKeys remembers the proxy's recent credentials.
type ownKeys struct {
	cur atomic.Pointer[awssdk.Credentials] // the pair the last load gave

	mu       sync.Mutex
	prev     []awssdk.Credentials // earlier temporary pairs, oldest first
	reloaded time.Time            // when a client's unknown key last made the proxy load again
}

const (
	// maxPrevKeys bounds the earlier pairs kept (a rotation a few hours; they expire within one).
	maxPrevKeys = 4
	// ownReloadEvery bounds the loads an unknown temporary key can cause: anyone can send one.
	// Short, as a stream of made-up keys takes every slot: a real client signing with rotated
	// credentials just after one is refused until the next (AWS SDKs do not retry the refusal).
	ownReloadEvery = 10 * time.Second
)

// note records creds as the proxy's current pair; the pair it replaces is kept while it is valid.
func (k *ownKeys) note(creds awssdk.Credentials) {
	if cur := k.cur.Load(); cur != nil && cur.AccessKeyID == creds.AccessKeyID {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if old := k.cur.Swap(&creds); old != nil && old.AccessKeyID != creds.AccessKeyID && old.CanExpire {
		k.prev = append(k.prev, *old)
		if len(k.prev) > maxPrevKeys {
			k.prev = k.prev[1:]
		}
	}
}

// previous returns the secret of an earlier pair with key that has not expired at now.
func (k *ownKeys) previous(key string, now time.Time) (string, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.prev {
		if c.AccessKeyID == key && now.Before(c.Expires) {
			return c.SecretAccessKey, true
		}
	}
	return "", false
}

// mayReload reports whether an unknown key may make the proxy load its credentials again now.
func (k *ownKeys) mayReload(now time.Time) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.reloaded.IsZero() && now.Sub(k.reloaded) < ownReloadEvery {
		return false
	}
	k.reloaded = now
	return true
}

// ownSecret is the secret of key when key is the proxy's own: its current credentials (creds,
// just loaded), an earlier pair still valid, or, for a temporary key (the request carries a
// session token), the pair a fresh load gives.
func (p *Proxy) ownSecret(ctx context.Context, c *call, creds awssdk.Credentials, key string) (string, bool) {
	if creds.AccessKeyID == key {
		return creds.SecretAccessKey, true
	}
	if s, ok := p.own.previous(key, c.now); ok {
		return s, true
	}
	cache, ok := p.creds.(*awssdk.CredentialsCache)
	if !ok || !creds.CanExpire || c.r.Header.Get("X-Amz-Security-Token") == "" || !p.own.mayReload(c.now) {
		return "", false
	}
	cache.Invalidate()
	fresh, err := p.loadCreds(ctx)
	if err != nil {
		p.logCredsError(err)
		return "", false
	}
	if fresh.AccessKeyID == key {
		return fresh.SecretAccessKey, true
	}
	return "", false
}
